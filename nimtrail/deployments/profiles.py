"""NIM model profiles: names such as `tensorrt_llm-h100-fp8-tp2-pp1-throughput`, 64-hex ids,
and the GPU names that go with them.

A profile name is a dash-separated list of tags: the engine first, then in any order the
GPU, the precision, `tp<N>`, `pp<N>`, `lora`, and `throughput` / `latency`. Names vary
between NIM releases; tags this parser does not know are kept in `extra` rather than
rejected.
"""

from __future__ import annotations

import re
from typing import Any

PROFILE_ID = re.compile(r"^[0-9a-f]{64}$")

ENGINES = {
    "vllm": "vllm",
    "tensorrt_llm": "tensorrt_llm",
    "tensorrt-llm": "tensorrt_llm",
    "trtllm": "tensorrt_llm",
    "trt_llm": "tensorrt_llm",
    "sglang": "sglang",
}

_PRECISION = re.compile(r"^(?:fp|bf|int|nvfp|mxfp|uint)\d+(?:_[a-z0-9]+)*$|^(?:awq|gptq|w\d+a\d+)$")
_GPU = re.compile(r"^(?:gb|gh|rtx|h|a|l|b|t|v)\d+[a-z0-9]*(?:_[a-z0-9]+)*$")
_GPU_FAMILY = re.compile(r"^(GB|GH|RTX|H|A|L|B|T|V)(\d+)([A-Z]*)$")


def is_profile_id(value: Any) -> bool:
    return isinstance(value, str) and bool(PROFILE_ID.match(value.strip().lower()))


def normalize_gpu(name: Any) -> str | None:
    """A GPU's family as nimtrail records it: "H100", "A100", "L40S", "T4", "GH200".

    Accepts node labels (`NVIDIA-H100-80GB-HBM3`), DCGM model names
    (`NVIDIA H100 80GB HBM3`), profile tags (`h100`, `h100_nvl`) and plain names.
    """
    if name is None:
        return None
    words = re.split(r"[\s\-_/]+", str(name).upper())
    for i, word in enumerate(words):
        if word == "RTX" and i + 1 < len(words) and words[i + 1].isdigit():
            word = "RTX" + words[i + 1]  # NVIDIA-RTX-6000-Ada
        match = _GPU_FAMILY.match(word)
        if match and word not in {"HBM3", "HBM2", "HBM2E"}:
            return word
    return None


def parse_profile_name(name: str) -> dict[str, Any]:
    """What a profile name says: engine, precision, tp, pp, gpu, lora, optimization.

    >>> parse_profile_name("tensorrt_llm-h100-fp8-tp2-pp1-throughput")["tp"]
    2
    Fields the name does not state are None (lora is False when not named); unknown tags
    are listed under "extra".
    """
    tags = [t for t in str(name).strip().lower().split("-") if t]
    out: dict[str, Any] = {"engine": None, "precision": None, "tp": None, "pp": None,
                           "gpu": None, "lora": False, "optimization": None, "extra": []}
    if tags and tags[0] in ENGINES:
        out["engine"] = ENGINES[tags.pop(0)]
    for tag in tags:
        if tag in ENGINES and out["engine"] is None:
            out["engine"] = ENGINES[tag]
        elif re.fullmatch(r"tp\d+", tag):
            out["tp"] = int(tag[2:])
        elif re.fullmatch(r"pp\d+", tag):
            out["pp"] = int(tag[2:])
        elif tag in {"lora", "feat_lora"}:
            out["lora"] = True
        elif tag in {"throughput", "latency"}:
            out["optimization"] = tag
        elif out["precision"] is None and _PRECISION.match(tag):
            out["precision"] = tag
        elif out["gpu"] is None and _GPU.match(tag):
            out["gpu"] = normalize_gpu(tag)
        else:
            out["extra"].append(tag)
    return out


def fields_from_profile_name(name: str) -> dict[str, Any]:
    """The deployment record fields a profile name determines."""
    parsed = parse_profile_name(name)
    fields = {
        "profile_name": name,
        "engine_backend": parsed["engine"],
        "precision": parsed["precision"],
        "tensor_parallel": parsed["tp"],
        "pipeline_parallel": parsed["pp"],
        "gpu_type": parsed["gpu"],
        "lora": {"enabled": parsed["lora"]},
    }
    return {k: v for k, v in fields.items() if v is not None}


def fields_from_profile_tags(tags: dict[str, Any]) -> dict[str, Any]:
    """Record fields from `Profile metadata:` tags (llm_engine, precision, tp, pp, feat_lora,
    gpu, gpu_device); tag values are strings as the container printed them."""
    def number(key: str) -> int | None:
        value = str(tags.get(key, "")).strip()
        return int(value) if value.isdigit() else None

    engine = str(tags.get("llm_engine", "")).strip().lower()
    lora = str(tags.get("feat_lora", "")).strip().lower()
    fields = {
        "engine_backend": ENGINES.get(engine, engine or None),
        "precision": str(tags["precision"]).strip().lower() if tags.get("precision") else None,
        "tensor_parallel": number("tp"),
        "pipeline_parallel": number("pp"),
        "gpu_type": normalize_gpu(tags.get("gpu")),
        "gpu_device": str(tags["gpu_device"]).strip() if tags.get("gpu_device") else None,
        "lora": {"enabled": lora == "true"} if lora in {"true", "false"} else None,
    }
    return {k: v for k, v in fields.items() if v is not None}


def profile_fields(value: str) -> dict[str, Any]:
    """Record fields for a profile as NIM_MODEL_PROFILE accepts it: a 64-hex id or a name."""
    value = value.strip()
    if is_profile_id(value):
        return {"profile_id": value.lower()}
    return fields_from_profile_name(value)
