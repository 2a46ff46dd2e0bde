"""How the V2 server runs: one frozen config for HTTP, gRPC, limits and batching."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ServeConfig(BaseModel):
    """How the server runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="Address to bind; 127.0.0.1 unless told.")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (0: any free port).")
    grpc_port: int | None = Field(
        None, ge=0, le=65535, description="V2 gRPC port (0: any free port; None: no gRPC)."
    )
    max_batch_size: int = Field(32, ge=1, description="Rows per merged model run.")
    max_delay_ms: float = Field(2.0, ge=0, description="How long a request waits for company.")
    threads: int = Field(2, ge=1, description="ONNX Runtime intra-op threads.")
    token: str | None = Field(None, description="Bearer token required on every request.")
    max_body_bytes: int = Field(64 * 2**20, ge=1024, description="Largest request body.")
    max_request_rows: int | None = Field(
        None,
        ge=1,
        description="Largest batch in one request (None: max_batch_size, as Triton refuses "
        "a request over the model's max_batch_size).",
    )
    access_log: bool = Field(False, description="Log every inference request (one line each).")
    max_header_bytes: int = Field(
        16 * 2**10, ge=1024, description="Largest request head (line + headers): 431 above."
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="Time to send a request's head once it began: 408 after."
    )
    body_timeout_s: float = Field(
        60.0, gt=0, description="Time to send a request's body once its head arrived: 408 after."
    )
    max_queue: int | None = Field(
        None,
        ge=1,
        description="Requests queued or running per model: 503 + Retry-After above "
        "(None: 2 x max_batch_size, two batches).",
    )
    max_queue_ms: float | None = Field(
        None,
        ge=0,
        description="A latency objective: the model time a request may find ahead of it (the "
        "run in progress and the queue, the tokenizer's backlog included, priced with the "
        "model's own measured run times); 503 + Retry-After above. None or 0: off, "
        "--max-queue alone.",
    )
    request_timeout_s: float | None = Field(
        30.0, gt=0, description="Longest a request waits in the queue before 504 (None: none)."
    )
    max_text_chars: int = Field(
        1_000_000, ge=1, description="Characters in one text request, all strings: 413 above."
    )
    reject_nonfinite: bool = Field(
        True, description="Answer 400 to float inputs holding NaN or infinity."
    )
    max_batch_tokens: int | None = Field(
        None,
        ge=16,
        description="Text models: the most tokens (rows x padded length) in one model run; "
        "a request over it is refused with 413 (the OpenAI route splits its texts to fit). "
        "None: batches are bounded by rows only.",
    )
    warmup_tokens: int = Field(
        1024,
        ge=0,
        description="Padding-free text models (the unpad step): before the server reports "
        "ready, run each token bucket up to this many real tokens once, so no request pays "
        "OpenVINO's first-run kernel build for a new shape. 0: no warm-up.",
    )
    llm_slots: int = Field(
        16,
        ge=1,
        le=256,
        description="Decoder LMs: sequences decoded together (continuous batching); each has "
        "a row of the KV cache, preallocated.",
    )
    llm_slot_tokens: int = Field(
        1024,
        ge=16,
        description="Decoder LMs: the KV cache row's length, the most tokens (prompt + "
        "completion) of one sequence (at most the model's context).",
    )
    llm_max_tokens: int = Field(
        512, ge=1, description="Decoder LMs: the most new tokens one request may ask for."
    )
    llm_chunk_tokens: int = Field(
        128,
        ge=1,
        description="Decoder LMs: prompt tokens prefilled between two decode steps (how long "
        "a new prompt may hold back the other sequences' tokens; while none decodes, up to "
        "512).",
    )
    llm_idle_chunk_tokens: int = Field(
        512,
        ge=1,
        description="Decoder LMs: prompt tokens prefilled per step while no sequence decodes "
        "(nothing waits on them; bounds a step's memory).",
    )
    llm_max_queue: int = Field(
        64, ge=0, description="Decoder LMs: sequences waiting for a slot; 429 above."
    )
    llm_lookup_tokens: int = Field(
        0,
        ge=0,
        le=64,
        description="Decoder LMs: prompt lookup decoding, the most tokens proposed per step "
        "from earlier text (greedy requests while one sequence decodes; exact). 0: off.",
    )
    llm_prefill: Literal["auto", "onnxruntime"] = Field(
        "auto",
        description="Decoder LMs: where prompts run. auto: where the artifact's recipe run "
        "measured them fastest within the goal (manifest.llm_prefill: OpenVINO or ONNX "
        "Runtime); onnxruntime: always with the decode steps, in ONNX Runtime.",
    )
    truncate_text: bool = Field(
        True,
        description="Cut a text longer than the model's max_length tokens (as the OpenAI "
        "route and sentence-transformers do); False: refuse it with 400.",
    )

    @field_validator("token")
    @classmethod
    def _token_not_empty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError(
                "the token is empty (SLIMSERVE_TOKEN= set to nothing?), which would turn "
                "auth off silently: give a token, or unset it to serve without one"
            )
        return value

    @property
    def queue_limit(self) -> int:
        """Requests a model may have queued or running."""
        return self.max_queue or 2 * self.max_batch_size

    @property
    def request_rows(self) -> int:
        """The largest batch one request may carry."""
        return self.max_request_rows or self.max_batch_size

    @property
    def ort_spinning(self) -> bool:
        """Let ORT's threads spin between runs only without batching. Spinning answers
        back-to-back one-request runs sooner, but with batching the threads would spin
        while the event loop parses the next batch's requests on the same cores. With
        spinning off in both servers, one run of benchmarks/serve.py on the 2-core
        machine took the batching server from 2,276 to 4,585 req/s at concurrency 32
        and the unbatched one from 2,775 to 1,750 req/s at concurrency 16."""
        return self.max_batch_size == 1
