"""The lines a NIM container prints, in the shapes of NIM 1.x and 2.x (NIM_FORMATS.md).

With JSONL logging on, NIM's own loggers print one JSON object per line — 1.x with
`file_path`, a year-less time and a string `line_number`; 2.x with `file_name`, a dated time
and an integer — while banners, vLLM worker lines and TensorRT-LLM lines stay plain text.
"""

from __future__ import annotations

import datetime as dt
import json
import random

from simulator.logfile import LogFile

V1_PREFIX = "/usr/local/lib/python3.10/dist-packages/"


class NimLog:
    def __init__(self, file: LogFile, major: int, engine: str, r: random.Random):
        self.file = file
        self.major = major
        self.engine = engine
        self._r = r

    # -- shapes -----------------------------------------------------------------------

    def json(self, at: dt.datetime, source: str, line: int, message: str, level: str = "INFO") -> str:
        """One NIM JSONL record; `source` is a path under site-packages."""
        if self.major < 2:
            millis = f"{at.microsecond // 1000:03d}"
            return json.dumps({"level": level, "time": at.strftime("%m-%d %H:%M:%S.") + millis,
                               "file_path": V1_PREFIX + source, "line_number": str(line),
                               "message": message, "exc_info": "None", "stack_info": "None"})
        return json.dumps({"level": level, "time": at.strftime("%Y-%m-%d %H:%M:%S"),
                           "file_name": source.rsplit("/", 1)[-1], "line_number": line,
                           "message": message}, separators=(",", ":"))

    @staticmethod
    def worker(at: dt.datetime, source: str, line: int, message: str, level: str = "INFO") -> str:
        """vLLM's plain worker line: `INFO 02-20 21:47:24 model_runner.py:173] ...`."""
        return f"{level} {at.strftime('%m-%d %H:%M:%S')} {source}:{line}] {message}"

    @staticmethod
    def trtllm(at: dt.datetime, message: str, level: str = "WARNING") -> str:
        millis = f"{at.microsecond // 1000:03d}"
        return f"{at.strftime('%Y-%m-%d %H:%M:%S')},{millis} [{level}] [TRT-LLM] [{level[0]}] {message}"

    def write(self, lines: list[str], at: dt.datetime) -> None:
        self.file.write(lines, at)

    # -- what happens -----------------------------------------------------------------

    def startup(self, at: dt.datetime, *, model: str, nim_release: str, profile_id: str,
                profile_name: str, tags: dict[str, str], gpus: int, tp: int) -> None:
        lines = [
            "===========================================",
            "== NVIDIA Inference Microservice LLM NIM ==",
            "===========================================",
            "",
            f"NVIDIA Inference Microservice LLM NIM Version {nim_release}",
            f"Model: {model}",
            "",
            "Container image Copyright (c) 2016-2025, NVIDIA CORPORATION & AFFILIATES. All rights reserved.",
            "",
        ]
        gpu_list = ", ".join(str(i) for i in range(gpus))
        if self.major < 2:
            lines += [
                self.json(at, "vllm_nvext/entrypoints/launch.py", 99, "NIM LLM API version 1.0.0"),
                self.json(at, "vllm_nvext/hub/ngc_injector.py", 141,
                          f"Valid profile: {profile_id} ({profile_name}) on GPUs [{gpu_list}]"),
                self.json(at, "vllm_nvext/hub/ngc_injector.py", 178,
                          f"Selected profile: {profile_id} ({profile_name})"),
            ]
            lines += [self.json(at, "vllm_nvext/hub/ngc_injector.py", 186, f"Profile metadata: {k}: {v}")
                      for k, v in tags.items()]
            lines.append(self.json(at, "vllm_nvext/hub/ngc_injector.py", 212,
                                   "Using the profile specified by the user: NIM_MODEL_PROFILE"))
        else:
            lines += [
                self.json(at, "nim_llm_sdk/entrypoints/start_server.py", 42, f"Starting NIM LLM {nim_release}"),
                self.json(at, "nim_llm_sdk/entrypoints/start_server.py", 58,
                          f"Serving model {model} with the {self.engine} backend"),
            ]
        if self.engine == "tensorrt_llm":
            lines += [
                self.trtllm(at, "Implicitly setting LLaMAForCausalLM.has_partial_lora_mask = False"),
                self.trtllm(at, f"Loaded engine with tensor parallel size {tp}", level="INFO"),
            ]
        else:
            lines.append(self.json(at, "vllm/engine/llm_engine.py", 174,
                                   f"Initializing an LLM engine (v0.6.3) with config: model='/opt/nim/workspace', "
                                   f"tensor_parallel_size={tp}, pipeline_parallel_size=1, "
                                   f"served_model_name={model}, enable_prefix_caching=False"))
            lines.append(self.worker(at, "model_runner.py", 1072,
                                     f"Loading model weights took {self._r.uniform(7, 70):.1f} GB"))
        lines.append(self.json(at, "uvicorn/server.py" if self.major >= 2 else "uvicorn/server.py", 219,
                               "Uvicorn running on http://0.0.0.0:8000 (Press CTRL+C to quit)"))
        self.write(lines, at)

    def request(self, at: dt.datetime, *, request_id: str, prompt: str, max_tokens: int,
                peer: str, status: int = 200) -> None:
        if self.major < 2:
            received = (f"Received request {request_id}: prompt: {prompt!r}, params: SamplingParams(n=1, "
                        f"temperature=0.2, top_p=0.7, max_tokens={max_tokens}), lora_request: None.")
        else:
            received = (f"Received request {request_id}: params: SamplingParams(n=1, temperature=0.2, "
                        f"top_p=0.7, max_tokens={max_tokens}), lora_request: None.")
        self.write([
            self.json(at, "vllm/engine/async_llm_engine.py", 208, received),
            self.json(at, "uvicorn/protocols/http/httptools_impl.py", 481,
                      f'{peer} - "POST /v1/chat/completions HTTP/1.1" {status}'),
            self.json(at, "vllm/engine/async_llm_engine.py", 133, f"Finished request {request_id}."),
        ], at)

    def access(self, at: dt.datetime, peer: str, method: str, path: str, status: int) -> None:
        self.write([self.json(at, "uvicorn/protocols/http/httptools_impl.py", 481,
                              f'{peer} - "{method} {path} HTTP/1.1" {status}')], at)

    def stats(self, at: dt.datetime, *, prompt_tps: float, generation_tps: float, running: int,
              waiting: int, kv_usage: float) -> None:
        if self.major < 2:
            line = self.worker(at, "metrics.py", 351,
                               f"Avg prompt throughput: {prompt_tps:.1f} tokens/s, Avg generation throughput: "
                               f"{generation_tps:.1f} tokens/s, Running: {running} reqs, Swapped: 0 reqs, "
                               f"Pending: {waiting} reqs, GPU KV cache usage: {100 * kv_usage:.1f}%, "
                               "CPU KV cache usage: 0.0%.")
        else:
            line = self.json(at, "vllm/v1/metrics/loggers.py", 116,
                             f"Engine 000: Avg prompt throughput: {prompt_tps:.1f} tokens/s, Avg generation "
                             f"throughput: {generation_tps:.1f} tokens/s, Running: {running} reqs, Waiting: "
                             f"{waiting} reqs, GPU KV cache usage: {100 * kv_usage:.1f}%, Prefix cache hit "
                             "rate: 0.0%")
        self.write([line], at)

    def shutdown(self, at: dt.datetime) -> None:
        self.write([self.json(at, "uvicorn/server.py", 264, "Shutting down"),
                    self.json(at, "uvicorn/lifespan/on.py", 67, "Waiting for application shutdown."),
                    self.json(at, "uvicorn/lifespan/on.py", 76, "Application shutdown complete.")], at)
