"""The error tree of radproto: every exception the project raises on purpose is one of these.

    RadprotoError
    ├── CatalogError              a catalog file is invalid (names file, line and field)
    ├── ConfigError               a configuration file or setting is invalid (names the setting)
    ├── OrderFileError            an order file cannot be read (names file, line and field)
    ├── MappingError              an HL7 v2 message or FHIR resource cannot become an order
    │   ├── ParseError            text that is not HL7 v2 at all    fhir_mappings/hl7v2_parser.py
    │   ├── HL7Error              a located HL7 v2 error (ERR)      fhir_mappings/hl7v2_types.py
    │   └── FhirValidationError   a resource breaks FHIR or a rule  fhir_mappings/fhir_validate.py
    ├── ModelError                a model cannot be loaded, trained or scored
    ├── TrainingInterrupted       a stop signal ended training      training/stopping.py
    ├── StoreUnavailable          the store cannot be reached       adapter/store/types.py
    ├── AuthError                 a caller is not authenticated     adapter/security/principal.py
    └── InterfaceError            talking to a peer system failed
        ├── FramingError          bytes that break MLLP framing     adapter/mllp.py
        ├── TransientSendError    an MLLP send may not have arrived adapter/mllp_client.py
        ├── FhirClientError       a FHIR request failed             adapter/fhir_client.py
        └── SmartAuthError        no SMART access token             adapter/smart_auth.py

Each edge translates them in one place: HL7Error -> ACK/NAK code and ERR segment
(fhir_mappings/hl7v2_ack.py `build_ack`, chosen by adapter/hl7_listener.py `_nak`);
FhirValidationError and AuthError -> OperationOutcome (fhir_mappings/fhir_validate.py
`operation_outcome`); any RadprotoError -> CLI exit status 2 (radproto/cli.py `main`).
"""

from __future__ import annotations

from typing import Self


class RadprotoError(Exception):
    """Base of every error radproto raises on purpose."""


class _LocatedError(RadprotoError):
    """An error in a file, located by path, line and field so an operator can fix it."""

    def __init__(self, message: str, *, path: str = "", line: int | None = None, field: str = ""):
        self.path = str(path)
        self.line = line
        self.field = field
        self.reason = message
        where = self.path or "<input>"
        if line is not None:
            where += f", line {line}"
        if field:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")

    @classmethod
    def from_yaml(cls, exc: Exception, *, path: str) -> Self:
        """The error for a YAML syntax error, at the line PyYAML marked."""
        mark = getattr(exc, "problem_mark", None)
        return cls(f"not valid YAML: {getattr(exc, 'problem', exc)}", path=path,
                   line=mark.line + 1 if mark else None)


class CatalogError(_LocatedError):
    """A protocol catalog file is invalid."""


class ConfigError(_LocatedError):
    """A configuration file or setting is invalid."""


class OrderFileError(_LocatedError):
    """An order file (JSONL, CSV or Parquet) cannot be read."""


class MappingError(RadprotoError):
    """An interface message cannot be mapped to an order."""

    def __init__(self, message: str, *, location: str = ""):
        self.location = location
        super().__init__(f"{location}: {message}" if location else message)


class ModelError(RadprotoError):
    """A model cannot be loaded, trained or scored."""


class InterfaceError(RadprotoError):
    """Talking to a peer system (interface engine, RIS, EHR) failed."""
