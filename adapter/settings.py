"""The service settings: the only reader of the service's configuration (the YAML file and the
RADPROTO_* variables of its settings; radproto/cli.py only maps RADPROTO_<FLAG> onto its flags,
and training/pyfunc.py reads RADPROTO_PYFUNC_THREADS inside Spark workers, where no settings go).

Precedence, highest first: command-line flags, RADPROTO_* environment variables, the YAML
config file (--config), the embedded defaults. Nested sections read `RADPROTO_<SECTION>__<FIELD>`
(e.g. RADPROTO_SECURITY__LOG_FORMAT). A bad file or value raises ConfigError naming the file,
the line (when it came from the file) and the field.
"""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from radproto.adapter.fhir_client import FhirSettings
from radproto.adapter.security.settings import SecuritySettings
from radproto.model.errors import ConfigError

ENV_PREFIX = "RADPROTO_"
DEFAULT_DATA_DIR = Path("radproto-data")
_FILE_DATA: ContextVar[dict[str, Any] | None] = ContextVar("radproto_settings_file", default=None)


class ServiceSettings(BaseSettings):
    """Everything `radproto serve` needs; every field has an embedded default."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__",
                                      extra="forbid", validate_default=True)

    host: str = "127.0.0.1"
    mllp_port: int = Field(default=2575, ge=0, le=65535)
    http_port: int = Field(default=8080, ge=0, le=65535)
    http_enabled: bool = True
    data_dir: Path = DEFAULT_DATA_DIR
    #: sqlite:///PATH or postgresql://...; default: sqlite under data_dir.
    store: str = ""
    #: Model directory, models:/NAME@ALIAS, runs:/... ; empty: the default model (trained once).
    model: str = ""
    tracking_uri: str = ""  # MLflow; default: sqlite:///mlflow.db, as radproto train
    catalog: Path | None = None
    catalog_mode: Literal["extend", "replace"] | None = None
    #: Check the registry alias of a models:/NAME@ALIAS model every this many seconds and
    #: switch to a new version without a restart (0: never; SIGHUP checks at once).
    model_poll_s: float = Field(default=60.0, ge=0)

    # MLLP listener
    mllp_max_message_bytes: int = Field(default=1_048_576, ge=1024)
    mllp_idle_timeout_s: float = Field(default=300.0, gt=0)
    mllp_default_charset: str = "utf-8"
    shutdown_grace_s: float = Field(default=10.0, ge=0)

    # Worker (classification)
    worker_batch_size: int = Field(default=8, ge=1, le=256)
    #: CUDA only: torch.compile RMSNorm, SwiGLU and RoPE at start-up (~12 s more before
    #: ready on a 7B; then 24 instead of 28 ms per single order, +20-45% batched).
    compile_kernels: bool = False
    #: CUDA only, 4-bit base: calls of at most this many prompt tokens (the lone order) run
    #: an int4 copy of the LoRA-folded weights through the Marlin GEMM (model/marlin.py;
    #: needs nvcc and gptqmodel's sources; +3.3 GB on a 7B). 0: off.
    marlin_tokens: int = Field(default=0, ge=0, le=4096)
    #: CUDA only, 4-bit base, a card with FP8 tensor cores (Ada, Hopper): batches of at
    #: least 1,024 tokens run their GEMMs in FP8 (model/fp8.py; no extra memory).
    fp8_burst: bool = False
    #: CUDA only, 4-bit base: a burst's scoring batches run layer by layer in waves of up
    #: to this many prompt tokens, so each decoder layer's weights are dequantised, folded
    #: (and cast to FP8) once a wave rather than once a batch (model/scoring.py
    #: layer_major_hidden_states; holds the wave's hidden states: 8 KB a token on a 7B).
    #: 0: off. On an H100 with fp8_burst and compile_kernels, 65536 with
    #: scoring_batch_tokens 3072 scored a 512-order burst end to end at 644-648 orders/s
    #: in 4.95 GB (bench/GPU_NOTES.md run 27: issue 15's burst recipe); batches under
    #: ~2,500 tokens lose (each layer's call is paid once a batch).
    layer_major_tokens: int = Field(default=0, ge=0)
    #: CUDA only: prompt tokens per batched scoring pass (padding included); see
    #: docs/benchmarks.md (gpu-command) for throughput and memory by setting.
    scoring_batch_tokens: int = Field(default=32768, ge=512)
    worker_lease_s: float = Field(default=120.0, gt=0)
    worker_poll_s: float = Field(default=1.0, gt=0)

    # Write-back (outbound MLLP); no host: no write-back.
    writeback_host: str = ""
    writeback_port: int = Field(default=0, ge=0, le=65535)
    writeback_style: Literal["auto", "omi", "orm"] = "auto"
    writeback_sending_application: str = "RADPROTO"
    writeback_sending_facility: str = ""
    writeback_receiving_application: str = ""  # default: the order's sender (MSH-3)
    writeback_receiving_facility: str = ""  # default: the order's MSH-4
    writeback_ack_timeout_s: float = Field(default=10.0, gt=0)
    writeback_backoff_initial_s: float = Field(default=1.0, gt=0)
    writeback_backoff_max_s: float = Field(default=60.0, gt=0)
    writeback_tls: bool = False
    writeback_tls_ca: Path | None = None

    security: SecuritySettings = Field(default_factory=SecuritySettings)
    fhir: FhirSettings = Field(default_factory=FhirSettings)

    @model_validator(mode="after")
    def _defaults_under_data_dir(self) -> ServiceSettings:
        if not self.store:
            self.store = f"sqlite:///{self.data_dir / 'radproto.db'}"
        if not self.tracking_uri:
            # The same registry `radproto train` writes to, so a model it registers is served.
            self.tracking_uri = "sqlite:///mlflow.db"
        if not self.store.startswith(("sqlite:///", "postgresql:", "postgres:",
                                      "postgresql+psycopg:")):
            raise ValueError("store must be sqlite:///PATH or postgresql://...")
        if self.writeback_host and not self.writeback_port:
            raise ValueError("writeback_port is required with writeback_host")
        return self

    @property
    def writeback_destination(self) -> str:
        return f"{self.writeback_host}:{self.writeback_port}" if self.writeback_host else ""

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _FileSource(settings_cls)


class _FileSource(PydanticBaseSettingsSource):
    """The YAML config file's values (set for the duration of `load_settings`)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        data = _FILE_DATA.get() or {}
        return data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_FILE_DATA.get() or {})


def load_settings(config_file: str | Path | None = None,
                  overrides: dict[str, Any] | None = None) -> ServiceSettings:
    """Settings from flags (`overrides`, None values ignored), env, the YAML file, defaults."""
    file_data: dict[str, Any] = {}
    text = ""
    path = str(config_file) if config_file else ""
    if config_file is not None:
        try:
            text = Path(config_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the config file: {exc.strerror}", path=path) from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError.from_yaml(exc, path=path) from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError("the config file must be a mapping of setting: value", path=path,
                              line=1)
        file_data = loaded
    init = {k: v for k, v in (overrides or {}).items() if v is not None}
    token = _FILE_DATA.set(file_data)
    try:
        return ServiceSettings(**init)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"]]
        name = ".".join(loc) or "(settings)"
        line = _line_of(text, loc) if loc and loc[0] in file_data and loc[0] not in init else None
        if line is None and loc and loc[0] not in file_data and loc[0] not in init:
            env = ENV_PREFIX + "__".join(loc).upper()
            name = f"{name} (env {env})" if loc[0] in ServiceSettings.model_fields else name
        raise ConfigError(first["msg"], path=path if line is not None else "", line=line,
                          field=name) from exc
    finally:
        _FILE_DATA.reset(token)


def _line_of(text: str, loc: list[str]) -> int | None:
    """The 1-based line of the value at `loc` in the YAML text (best effort)."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == key), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and key.isdigit() and int(key) < len(node.value):
            node = node.value[int(key)]
            line = node.start_mark.line + 1
        else:
            break
    return line


def settings_from_cli(args: Any) -> ServiceSettings:
    """`radproto serve` flags on top of env, file and defaults."""
    overrides: dict[str, Any] = {
        "host": getattr(args, "host", None),
        "mllp_port": getattr(args, "mllp_port", None),
        "http_port": getattr(args, "http_port", None),
        "store": getattr(args, "store", None),
        "model": getattr(args, "model", None),
        "catalog": getattr(args, "catalog", None),
        "catalog_mode": getattr(args, "catalog_mode", None),
    }
    settings = load_settings(getattr(args, "config", None), overrides)
    api_keys = getattr(args, "api_keys", None)
    if api_keys is not None:
        settings.security = settings.security.model_copy(update={"api_keys_file": Path(api_keys)})
    return settings
