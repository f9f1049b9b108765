from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "k", "exclude_seen", "diversity", "explain")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    k: int
    exclude_seen: bool
    diversity: float
    explain: bool
    def __init__(self, user_id: _Optional[str] = ..., k: _Optional[int] = ..., exclude_seen: _Optional[bool] = ..., diversity: _Optional[float] = ..., explain: _Optional[bool] = ...) -> None: ...

class RecommendedItem(_message.Message):
    __slots__ = ("item_id", "title", "score", "because")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    BECAUSE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    title: str
    score: float
    because: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_id: _Optional[str] = ..., title: _Optional[str] = ..., score: _Optional[float] = ..., because: _Optional[_Iterable[str]] = ...) -> None: ...

class RecommendReply(_message.Message):
    __slots__ = ("items", "cold_start", "cold_start_reason", "model_version")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    COLD_START_FIELD_NUMBER: _ClassVar[int]
    COLD_START_REASON_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    cold_start: bool
    cold_start_reason: str
    model_version: str
    def __init__(self, items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., cold_start: _Optional[bool] = ..., cold_start_reason: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class SimilarItemsRequest(_message.Message):
    __slots__ = ("item_id", "k")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    k: int
    def __init__(self, item_id: _Optional[str] = ..., k: _Optional[int] = ...) -> None: ...

class TextRequest(_message.Message):
    __slots__ = ("query", "k")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    query: str
    k: int
    def __init__(self, query: _Optional[str] = ..., k: _Optional[int] = ...) -> None: ...

class ItemList(_message.Message):
    __slots__ = ("items", "model_version")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    model_version: str
    def __init__(self, items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...

class AddItemRequest(_message.Message):
    __slots__ = ("item_id", "text", "categories")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    text: str
    categories: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_id: _Optional[str] = ..., text: _Optional[str] = ..., categories: _Optional[_Iterable[str]] = ...) -> None: ...

class AddItemReply(_message.Message):
    __slots__ = ("item_id", "catalog_size", "text_truncated")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CATALOG_SIZE_FIELD_NUMBER: _ClassVar[int]
    TEXT_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    catalog_size: int
    text_truncated: bool
    def __init__(self, item_id: _Optional[str] = ..., catalog_size: _Optional[int] = ..., text_truncated: _Optional[bool] = ...) -> None: ...

class InteractionRequest(_message.Message):
    __slots__ = ("user_id", "item_id", "timestamp")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_id: str
    timestamp: int
    def __init__(self, user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., timestamp: _Optional[int] = ...) -> None: ...

class InteractionReply(_message.Message):
    __slots__ = ("logged", "refreshed", "user_interactions")
    LOGGED_FIELD_NUMBER: _ClassVar[int]
    REFRESHED_FIELD_NUMBER: _ClassVar[int]
    USER_INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    logged: bool
    refreshed: bool
    user_interactions: int
    def __init__(self, logged: _Optional[bool] = ..., refreshed: _Optional[bool] = ..., user_interactions: _Optional[int] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfoReply(_message.Message):
    __slots__ = ("model_version", "run_dir", "catalog_size", "known_users", "last_reload_error", "loaded_at", "ann_recall_at_10", "ann_probes", "ann_clusters")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_DIR_FIELD_NUMBER: _ClassVar[int]
    CATALOG_SIZE_FIELD_NUMBER: _ClassVar[int]
    KNOWN_USERS_FIELD_NUMBER: _ClassVar[int]
    LAST_RELOAD_ERROR_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    ANN_RECALL_AT_10_FIELD_NUMBER: _ClassVar[int]
    ANN_PROBES_FIELD_NUMBER: _ClassVar[int]
    ANN_CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    run_dir: str
    catalog_size: int
    known_users: int
    last_reload_error: str
    loaded_at: float
    ann_recall_at_10: float
    ann_probes: int
    ann_clusters: int
    def __init__(self, model_version: _Optional[str] = ..., run_dir: _Optional[str] = ..., catalog_size: _Optional[int] = ..., known_users: _Optional[int] = ..., last_reload_error: _Optional[str] = ..., loaded_at: _Optional[float] = ..., ann_recall_at_10: _Optional[float] = ..., ann_probes: _Optional[int] = ..., ann_clusters: _Optional[int] = ...) -> None: ...
