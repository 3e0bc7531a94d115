from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ServeClientArgs(_message.Message):
    __slots__ = ("Request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    Request: str
    def __init__(self, Request: _Optional[str] = ...) -> None: ...

class ServeClientReply(_message.Message):
    __slots__ = ("Data", "LeaderID", "Success")
    DATA_FIELD_NUMBER: _ClassVar[int]
    LEADERID_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    Data: str
    LeaderID: str
    Success: bool
    def __init__(self, Data: _Optional[str] = ..., LeaderID: _Optional[str] = ..., Success: _Optional[bool] = ...) -> None: ...

class SetCommand(_message.Message):
    __slots__ = ("key", "value", "client_id", "seq")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    client_id: str
    seq: int
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ..., client_id: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class NoOp(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LogEntry(_message.Message):
    __slots__ = ("term", "set", "noop")
    TERM_FIELD_NUMBER: _ClassVar[int]
    SET_FIELD_NUMBER: _ClassVar[int]
    NOOP_FIELD_NUMBER: _ClassVar[int]
    term: int
    set: SetCommand
    noop: NoOp
    def __init__(self, term: _Optional[int] = ..., set: _Optional[_Union[SetCommand, _Mapping]] = ..., noop: _Optional[_Union[NoOp, _Mapping]] = ...) -> None: ...

class AppendEntriesArgs(_message.Message):
    __slots__ = ("term", "leader_id", "prev_log_index", "prev_log_term", "entries", "leader_commit", "lease_duration", "round")
    TERM_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    PREV_LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    PREV_LOG_TERM_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    LEADER_COMMIT_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    term: int
    leader_id: int
    prev_log_index: int
    prev_log_term: int
    entries: _containers.RepeatedCompositeFieldContainer[LogEntry]
    leader_commit: int
    lease_duration: float
    round: int
    def __init__(self, term: _Optional[int] = ..., leader_id: _Optional[int] = ..., prev_log_index: _Optional[int] = ..., prev_log_term: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[LogEntry, _Mapping]]] = ..., leader_commit: _Optional[int] = ..., lease_duration: _Optional[float] = ..., round: _Optional[int] = ...) -> None: ...

class AppendEntriesReply(_message.Message):
    __slots__ = ("term", "follower_id", "success", "match_index", "conflict_index", "round")
    TERM_FIELD_NUMBER: _ClassVar[int]
    FOLLOWER_ID_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MATCH_INDEX_FIELD_NUMBER: _ClassVar[int]
    CONFLICT_INDEX_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    term: int
    follower_id: int
    success: bool
    match_index: int
    conflict_index: int
    round: int
    def __init__(self, term: _Optional[int] = ..., follower_id: _Optional[int] = ..., success: _Optional[bool] = ..., match_index: _Optional[int] = ..., conflict_index: _Optional[int] = ..., round: _Optional[int] = ...) -> None: ...

class RequestVoteArgs(_message.Message):
    __slots__ = ("term", "candidate_id", "last_log_index", "last_log_term")
    TERM_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    LAST_LOG_TERM_FIELD_NUMBER: _ClassVar[int]
    term: int
    candidate_id: int
    last_log_index: int
    last_log_term: int
    def __init__(self, term: _Optional[int] = ..., candidate_id: _Optional[int] = ..., last_log_index: _Optional[int] = ..., last_log_term: _Optional[int] = ...) -> None: ...

class RequestVoteReply(_message.Message):
    __slots__ = ("term", "voter_id", "granted", "old_lease_remaining")
    TERM_FIELD_NUMBER: _ClassVar[int]
    VOTER_ID_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    OLD_LEASE_REMAINING_FIELD_NUMBER: _ClassVar[int]
    term: int
    voter_id: int
    granted: bool
    old_lease_remaining: float
    def __init__(self, term: _Optional[int] = ..., voter_id: _Optional[int] = ..., granted: _Optional[bool] = ..., old_lease_remaining: _Optional[float] = ...) -> None: ...

class RaftMessage(_message.Message):
    __slots__ = ("append_entries", "request_vote", "append_entries_reply", "request_vote_reply")
    APPEND_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_VOTE_FIELD_NUMBER: _ClassVar[int]
    APPEND_ENTRIES_REPLY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_VOTE_REPLY_FIELD_NUMBER: _ClassVar[int]
    append_entries: AppendEntriesArgs
    request_vote: RequestVoteArgs
    append_entries_reply: AppendEntriesReply
    request_vote_reply: RequestVoteReply
    def __init__(self, append_entries: _Optional[_Union[AppendEntriesArgs, _Mapping]] = ..., request_vote: _Optional[_Union[RequestVoteArgs, _Mapping]] = ..., append_entries_reply: _Optional[_Union[AppendEntriesReply, _Mapping]] = ..., request_vote_reply: _Optional[_Union[RequestVoteReply, _Mapping]] = ...) -> None: ...

class RaftMessages(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[RaftMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[RaftMessage, _Mapping]]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("found", "value")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    found: bool
    value: str
    def __init__(self, found: _Optional[bool] = ..., value: _Optional[str] = ...) -> None: ...

class SetRequest(_message.Message):
    __slots__ = ("key", "value", "client_id", "seq")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    client_id: str
    seq: int
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ..., client_id: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class SetResponse(_message.Message):
    __slots__ = ("index",)
    INDEX_FIELD_NUMBER: _ClassVar[int]
    index: int
    def __init__(self, index: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("node_id", "role", "term", "leader_id", "log_length", "commit_length", "applied_length", "lease_remaining", "waiting_for_old_lease", "read_mode", "address")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    LOG_LENGTH_FIELD_NUMBER: _ClassVar[int]
    COMMIT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    APPLIED_LENGTH_FIELD_NUMBER: _ClassVar[int]
    LEASE_REMAINING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FOR_OLD_LEASE_FIELD_NUMBER: _ClassVar[int]
    READ_MODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    role: str
    term: int
    leader_id: int
    log_length: int
    commit_length: int
    applied_length: int
    lease_remaining: float
    waiting_for_old_lease: float
    read_mode: str
    address: str
    def __init__(self, node_id: _Optional[int] = ..., role: _Optional[str] = ..., term: _Optional[int] = ..., leader_id: _Optional[int] = ..., log_length: _Optional[int] = ..., commit_length: _Optional[int] = ..., applied_length: _Optional[int] = ..., lease_remaining: _Optional[float] = ..., waiting_for_old_lease: _Optional[float] = ..., read_mode: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class PipelineRequest(_message.Message):
    __slots__ = ("tag", "get", "set", "timeout_ms")
    TAG_FIELD_NUMBER: _ClassVar[int]
    GET_FIELD_NUMBER: _ClassVar[int]
    SET_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    tag: int
    get: GetRequest
    set: SetRequest
    timeout_ms: int
    def __init__(self, tag: _Optional[int] = ..., get: _Optional[_Union[GetRequest, _Mapping]] = ..., set: _Optional[_Union[SetRequest, _Mapping]] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class PipelineReply(_message.Message):
    __slots__ = ("tag", "code", "details", "leader_id", "leader_address", "found", "value", "index")
    TAG_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    tag: int
    code: int
    details: str
    leader_id: int
    leader_address: str
    found: bool
    value: str
    index: int
    def __init__(self, tag: _Optional[int] = ..., code: _Optional[int] = ..., details: _Optional[str] = ..., leader_id: _Optional[int] = ..., leader_address: _Optional[str] = ..., found: _Optional[bool] = ..., value: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class PipelineRequests(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[PipelineRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[PipelineRequest, _Mapping]]] = ...) -> None: ...

class PipelineReplies(_message.Message):
    __slots__ = ("replies",)
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[PipelineReply]
    def __init__(self, replies: _Optional[_Iterable[_Union[PipelineReply, _Mapping]]] = ...) -> None: ...
