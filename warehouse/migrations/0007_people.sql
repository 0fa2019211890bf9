-- The person behind a request, as a trusted authenticating proxy named them
-- (warehouse.trusted_proxies), next to the token that made it: on every access and every
-- export. Null when no trusted proxy named anyone. Rows written before these columns hash
-- as they did: a null late column is left out of a row's canonical form (tables.py).

ALTER TABLE access_log ADD COLUMN person VARCHAR;
ALTER TABLE exports ADD COLUMN person VARCHAR;
