from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ZoGradEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ZO_GRAD_ENCODING_UNSPECIFIED: _ClassVar[ZoGradEncoding]
    ZO_GRAD_ENCODING_INT8: _ClassVar[ZoGradEncoding]
    ZO_GRAD_ENCODING_FP32: _ClassVar[ZoGradEncoding]

class ZoSeedChoice(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ZO_SEED_CHOICE_UNSPECIFIED: _ClassVar[ZoSeedChoice]
    ZO_SEED_CHOICE_DERIVED: _ClassVar[ZoSeedChoice]
    ZO_SEED_CHOICE_EXPLICIT: _ClassVar[ZoSeedChoice]
ZO_GRAD_ENCODING_UNSPECIFIED: ZoGradEncoding
ZO_GRAD_ENCODING_INT8: ZoGradEncoding
ZO_GRAD_ENCODING_FP32: ZoGradEncoding
ZO_SEED_CHOICE_UNSPECIFIED: ZoSeedChoice
ZO_SEED_CHOICE_DERIVED: ZoSeedChoice
ZO_SEED_CHOICE_EXPLICIT: ZoSeedChoice

class ZoReply(_message.Message):
    __slots__ = ("version", "pool_id", "round", "client", "num_steps", "grad_encoding", "seed_choice", "scale", "seed_indices", "grads")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    NUM_STEPS_FIELD_NUMBER: _ClassVar[int]
    GRAD_ENCODING_FIELD_NUMBER: _ClassVar[int]
    SEED_CHOICE_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    SEED_INDICES_FIELD_NUMBER: _ClassVar[int]
    GRADS_FIELD_NUMBER: _ClassVar[int]
    version: int
    pool_id: int
    round: int
    client: int
    num_steps: int
    grad_encoding: ZoGradEncoding
    seed_choice: ZoSeedChoice
    scale: float
    seed_indices: bytes
    grads: bytes
    def __init__(self, version: _Optional[int] = ..., pool_id: _Optional[int] = ..., round: _Optional[int] = ..., client: _Optional[int] = ..., num_steps: _Optional[int] = ..., grad_encoding: _Optional[_Union[ZoGradEncoding, str]] = ..., seed_choice: _Optional[_Union[ZoSeedChoice, str]] = ..., scale: _Optional[float] = ..., seed_indices: _Optional[bytes] = ..., grads: _Optional[bytes] = ...) -> None: ...

class ZoRoundAggregate(_message.Message):
    __slots__ = ("round", "pool_id", "pool_size", "seed_indices", "values")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    POOL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEED_INDICES_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    round: int
    pool_id: int
    pool_size: int
    seed_indices: bytes
    values: bytes
    def __init__(self, round: _Optional[int] = ..., pool_id: _Optional[int] = ..., pool_size: _Optional[int] = ..., seed_indices: _Optional[bytes] = ..., values: _Optional[bytes] = ...) -> None: ...

class ZoHistory(_message.Message):
    __slots__ = ("version", "rounds")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    version: int
    rounds: _containers.RepeatedCompositeFieldContainer[ZoRoundAggregate]
    def __init__(self, version: _Optional[int] = ..., rounds: _Optional[_Iterable[_Union[ZoRoundAggregate, _Mapping]]] = ...) -> None: ...
