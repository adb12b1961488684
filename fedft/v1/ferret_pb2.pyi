from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FerretCoordEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FERRET_COORD_ENCODING_UNSPECIFIED: _ClassVar[FerretCoordEncoding]
    FERRET_COORD_ENCODING_INT8: _ClassVar[FerretCoordEncoding]
    FERRET_COORD_ENCODING_FP32: _ClassVar[FerretCoordEncoding]
    FERRET_COORD_ENCODING_INT4: _ClassVar[FerretCoordEncoding]
FERRET_COORD_ENCODING_UNSPECIFIED: FerretCoordEncoding
FERRET_COORD_ENCODING_INT8: FerretCoordEncoding
FERRET_COORD_ENCODING_FP32: FerretCoordEncoding
FERRET_COORD_ENCODING_INT4: FerretCoordEncoding

class FerretReply(_message.Message):
    __slots__ = ("version", "pool_id", "round", "client", "num_blocks", "encoding", "seed_counts", "scales", "coords")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SEED_COUNTS_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    COORDS_FIELD_NUMBER: _ClassVar[int]
    version: int
    pool_id: int
    round: int
    client: int
    num_blocks: int
    encoding: FerretCoordEncoding
    seed_counts: _containers.RepeatedScalarFieldContainer[int]
    scales: _containers.RepeatedScalarFieldContainer[float]
    coords: bytes
    def __init__(self, version: _Optional[int] = ..., pool_id: _Optional[int] = ..., round: _Optional[int] = ..., client: _Optional[int] = ..., num_blocks: _Optional[int] = ..., encoding: _Optional[_Union[FerretCoordEncoding, str]] = ..., seed_counts: _Optional[_Iterable[int]] = ..., scales: _Optional[_Iterable[float]] = ..., coords: _Optional[bytes] = ...) -> None: ...

class FerretRoundAggregate(_message.Message):
    __slots__ = ("round", "pool_id", "pool_size", "slots", "values")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    POOL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    round: int
    pool_id: int
    pool_size: int
    slots: bytes
    values: bytes
    def __init__(self, round: _Optional[int] = ..., pool_id: _Optional[int] = ..., pool_size: _Optional[int] = ..., slots: _Optional[bytes] = ..., values: _Optional[bytes] = ...) -> None: ...

class FerretHistory(_message.Message):
    __slots__ = ("version", "num_blocks", "rounds")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    version: int
    num_blocks: int
    rounds: _containers.RepeatedCompositeFieldContainer[FerretRoundAggregate]
    def __init__(self, version: _Optional[int] = ..., num_blocks: _Optional[int] = ..., rounds: _Optional[_Iterable[_Union[FerretRoundAggregate, _Mapping]]] = ...) -> None: ...
