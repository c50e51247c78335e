"""Agency-side adapters: consume an agency's inbox, verify, call its own system, answer signed.

One runtime (:class:`AdapterRuntime`) serves every agency kind; what differs per kind is the
gRPC service it calls (:func:`backend_for`): ``BankService``, ``CarrierService``,
``PlatformService`` or ``PoliceService``.
"""

from ._backends import (
    TRANSIENT_CODES,
    AgencyBackend,
    BackendOutcome,
    GrpcAgencyBackend,
    backend_for,
    open_agency_channel,
)
from ._config import AdapterConfig
from ._context import order_context
from ._errors import (
    AdapterConfigError,
    AdapterError,
    AgencyCallError,
    AgencyUnavailableError,
    IdempotencyConflictError,
    UnsupportedRequestError,
)
from ._events import EVENT_ID_NAMESPACE, event_id_for, refusal_event_id
from ._file_config import (
    AdapterFileConfig,
    AdapterMaterials,
    ServiceTls,
    load_adapter_file,
    load_adapter_materials,
)
from ._idempotency import ExecutionRecord, ExecutionState, IdempotencyStore
from ._metrics import AdapterMetrics, PrometheusAdapterMetrics, serve_adapter_metrics
from ._runtime import LANES, TASK_PREFIX, AdapterRuntime
from ._standalone import ADAPTER_HEALTH_SERVICE, StandaloneAdapter, wait_for_inbox

__all__ = [
    "ADAPTER_HEALTH_SERVICE",
    "EVENT_ID_NAMESPACE",
    "LANES",
    "TASK_PREFIX",
    "TRANSIENT_CODES",
    "AdapterConfig",
    "AdapterConfigError",
    "AdapterError",
    "AdapterFileConfig",
    "AdapterMaterials",
    "AdapterMetrics",
    "AdapterRuntime",
    "AgencyBackend",
    "AgencyCallError",
    "AgencyUnavailableError",
    "BackendOutcome",
    "ExecutionRecord",
    "ExecutionState",
    "GrpcAgencyBackend",
    "IdempotencyConflictError",
    "IdempotencyStore",
    "PrometheusAdapterMetrics",
    "ServiceTls",
    "StandaloneAdapter",
    "UnsupportedRequestError",
    "backend_for",
    "event_id_for",
    "load_adapter_file",
    "load_adapter_materials",
    "open_agency_channel",
    "order_context",
    "refusal_event_id",
    "serve_adapter_metrics",
    "wait_for_inbox",
]
