"""Compliance: retention policies and legal holds, the retention report and its export
(CSV, JSON, Parquet; each recorded in the ledger with its SHA-256), whether a file was
produced here, ledger verification, and the access log (who read what)."""

import datetime as dt
import hashlib

import streamlit as st

from app import data, views

FORMATS = {"CSV": "csv", "JSON": "json", "Parquet": "parquet"}
MIME = {"csv": "text/csv", "json": "application/json", "parquet": "application/vnd.apache.parquet"}

st.title("Compliance")
st.caption("What is kept and for how long, what was purged (with proof in the ledger), legal holds, "
           "a report a reviewer can check against the tamper-evident ledger, and who read what.")

today = dt.datetime.now(dt.timezone.utc).date()
picked = st.date_input("Report period (UTC)", (today - dt.timedelta(days=90), today), key="comp_period")
if not (isinstance(picked, (tuple, list)) and len(picked) == 2):
    st.info("Pick the last day of the period too.")
    st.stop()
start = views.iso(dt.datetime.combine(picked[0], dt.time(), dt.timezone.utc))
end = views.iso(dt.datetime.combine(picked[1], dt.time(), dt.timezone.utc) + dt.timedelta(days=1))

retention, export, ledger, access = st.tabs(["Retention and holds", "Report and export", "Ledger",
                                             "Access log"])

with retention:
    report = views.load("the retention report", data.retention_report, start, end)
    if report is not None:
        st.subheader("Policies")
        st.dataframe([{"data class": k, "kept for": (f"{v:g} days" if v else "forever")}
                      for k, v in report["policies_days"].items()], hide_index=True)
        st.subheader("What is held now")
        st.dataframe([{"data class": h["data_class"], "table": h["table_name"], "rows": h["rows"],
                       "under legal hold": h["held_rows"], "oldest": views.when(h["oldest"]),
                       "newest": views.when(h["newest"])} for h in report["held"]],
                     hide_index=True, width="stretch")
        st.subheader("Purges in the period")
        if report["purges"]:
            st.dataframe([{"when": views.when(p["purged_at"]), "policy": p["policy"], "table": p["tbl"],
                           "action": p["action"], "rows": p["rows"], "kept by holds": p["held_rows"],
                           "cutoff": views.when(p["cutoff"]), "by": p["principal"]} for p in report["purges"]],
                         hide_index=True, width="stretch")
        else:
            st.caption("No purge in this period. Retention runs every `warehouse.retention.interval`, "
                       "or now with `nimtrail retention apply` (`--dry-run` to count first).")
    st.subheader("Legal holds")
    holds = views.load("legal holds", data.holds, "all")
    if holds is not None:
        if holds["rows"]:
            st.dataframe([{"hold": h["hold_id"], "state": "released" if h.get("released_at") else "active",
                           "deployment": h.get("deployment_id"), "caller": h.get("caller"),
                           "from": views.when(h.get("time_from")), "to": views.when(h.get("time_to")),
                           "reason": h.get("reason"), "by": h.get("created_by"),
                           "since": views.when(h.get("created_at")),
                           "released": views.when(h.get("released_at"))} for h in holds["rows"]],
                         hide_index=True, width="stretch")
        else:
            st.caption("No legal hold. Add one with `nimtrail hold add --caller WHO --reason TEXT` "
                       "(or `--deployment ID`, `--from`, `--to`): what it covers survives retention.")

with export:
    st.markdown(f"The retention report for **{picked[0]} – {picked[1]}**: held rows per data class, purges, "
                "holds in force and accesses, with the ledger head. Each export is recorded in the "
                "ledger with its SHA-256, so the file a reviewer receives can be checked.")
    fmt = FORMATS[st.radio("Format", list(FORMATS), horizontal=True, key="comp_format")]
    if st.button("Prepare the export", key="comp_export", icon=":material/file_export:"):
        try:
            with st.spinner("Exporting…"):
                body, meta = data.export("retention-report", format=fmt, **{"from": start, "to": end})
            st.session_state.comp_exported = {"format": fmt, "body": body, "meta": meta,
                                              "name": f"retention-{picked[0]}-{picked[1]}.{fmt}"}
        except data.ApiError as e:
            st.error(f"Could not export the report: {e}", icon=":material/error:")
    done = st.session_state.get("comp_exported")
    if done:
        st.success(f"Export `{done['meta'].get('export_id')}`: {done['meta'].get('rows')} rows, "
                   f"SHA-256 `{done['meta'].get('sha256')}`", icon=":material/verified:")
        st.download_button(f"Download {done['name']}", done["body"], file_name=done["name"],
                           mime=MIME[done["format"]], key="comp_download", icon=":material/download:",
                           on_click="ignore")

    st.subheader("Was this file produced here?")
    st.caption("Upload an export (or paste its SHA-256, or an export id) to see whether and when this "
               "nimtrail produced it, with which filters and for whom.")
    c1, c2 = st.columns(2)
    uploaded = c1.file_uploader("An exported file", key="comp_check_file")
    pasted = c2.text_input("or its SHA-256 / export id", key="comp_check_id",
                           placeholder="sha256sum FILE, or exp-…").strip()
    asked = hashlib.sha256(uploaded.getvalue()).hexdigest() if uploaded is not None else pasted
    # Asked once per file or id, not on every rerun of the page: each lookup is logged.
    checked = st.session_state.get("comp_checked")
    if asked and (checked is None or checked["id"] != asked):
        checked = views.load("the export record", data.export_lookup, asked)
        if checked is not None:
            st.session_state.comp_checked = checked = {**checked, "id": asked}
    found = checked if asked and checked is not None and checked["id"] == asked else None
    if found is not None:
        if found["found"]:
            for e in found["rows"]:
                by = f"{e['person']} (token {e['principal']})" if e.get("person") else e.get("principal")
                filters = ", ".join(f"{k} = {v}" for k, v in sorted((e.get("params") or {}).items()))
                st.success(f"Produced by this nimtrail: export `{e['export_id']}` on "
                           f"{views.when(e['exported_at'])}, {e['kind']} ({e['format']}, {e['rows']} rows), "
                           f"filters {filters or 'none'}, by **{by}**.", icon=":material/verified:")
        else:
            st.error(f"Not produced by this nimtrail: no export has the id or SHA-256 `{asked}`.",
                     icon=":material/gpp_bad:")

with ledger:
    if report is not None:
        head, digest = report["ledger"], report.get("latest_digest")
        c1, c2 = st.columns(2)
        c1.metric("Ledger entries", head.get("seq"))
        c2.metric("Latest signed digest", f"#{digest['digest_seq']}" if digest else "none yet")
        st.caption(f"Chain head `{head.get('head')}`" + (f"; digest file `{digest['file']}` covers entries up to "
                                                         f"{digest['chain_seq']}" if digest else ""))
    st.markdown("Verification recomputes every row hash, the hash chain and the digest signatures, and "
                "names the first record or digest that does not match.")
    if st.button("Verify the ledger now", key="comp_verify", icon=":material/verified_user:"):
        with st.spinner("Verifying the ledger (about 30 s per million rows)…"):
            result = views.load("the verification", data.verify)
        if result is not None:
            st.session_state.comp_verified = (dt.datetime.now(dt.timezone.utc), result)
    if "comp_verified" in st.session_state:
        at, result = st.session_state.comp_verified
        if result.get("ok"):
            st.success(f"The ledger verifies: every row, the chain and the digests match "
                       f"(checked {at:%Y-%m-%d %H:%M:%S} UTC).", icon=":material/verified:")
        else:
            first = result.get("first_problem") or {}
            st.error(f"The ledger does NOT verify. First problem ({first.get('check')}): "
                     f"{first.get('where')} — {first.get('message')}", icon=":material/gpp_bad:")
            st.dataframe(result.get("problems") or [], hide_index=True, width="stretch")
        for warning in result.get("warnings") or []:
            st.warning(str(warning))
        rows_checked = result.get("rows_checked") or {}
        if rows_checked:
            st.dataframe([{"table": k, "rows checked": v} for k, v in rows_checked.items()], hide_index=True)
    else:
        st.caption("Not verified in this session yet.")

with access:
    c1, c2, c3, c4 = st.columns(4)
    principal = c1.text_input("Principal (token)", key="comp_principal").strip() or None
    person = c2.text_input("Person", key="comp_person", placeholder="as the proxy named them").strip() or None
    operation = c3.text_input("Operation", key="comp_operation", placeholder="e.g. query/trace-back").strip() or None
    refused = c4.toggle("Only refused requests (401/403)", key="comp_refused")
    log = views.load("the access log", data.access_log, principal=principal, person=person,
                     operation=operation, since=start, until=end, limit=500)
    if log is not None:
        entries = [e for e in log["rows"] if not refused or (e.get("status") or 0) in (401, 403)]
        if entries:
            st.dataframe([{"when": views.when(e["accessed_at"]), "principal": e.get("principal") or "(no token)",
                           "person": e.get("person"), "role": e.get("role"), "client": e.get("client_address"), "operation": e.get("operation"),
                           "parameters": views.text(e.get("params")), "status": e.get("status"),
                           "rows": e.get("rows")} for e in entries], hide_index=True, width="stretch")
        else:
            st.caption("No access matches in this period.")
