//! gRPC status: codes, the `grpc-message` encoding, and the one mapping from
//! qed's errors onto etcd's status codes.
//!
//! Role: every failure the shim reports goes through [`Status`]. The mapping
//! [`Status::from_wire`] is the only place that knows which gRPC code each
//! `wire::Error` carries; its table is etcd 3.4's
//! `etcdserver/api/v3rpc/rpctypes/error.go`, and the message is the error's
//! `Display`, which `qed-wire` keeps equal to etcd's text.
//!
//! Invariant: a `Status` is always representable on the wire — the message
//! is percent-encoded by [`encode_message`] as the gRPC spec demands, so no
//! node-supplied text can break the HTTP/2 header block.

use crate::client::ClientError;
use crate::wire;
use std::fmt;

/// gRPC status codes (`google.golang.org/grpc/codes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Code {
    Ok = 0,
    Canceled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    pub const ALL: [Code; 17] = [
        Code::Ok,
        Code::Canceled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The name gRPC gives the code (`OK`, `Unavailable`): the `grpc_code`
    /// label of etcd's gRPC metrics.
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Canceled => "Canceled",
            Code::Unknown => "Unknown",
            Code::InvalidArgument => "InvalidArgument",
            Code::DeadlineExceeded => "DeadlineExceeded",
            Code::NotFound => "NotFound",
            Code::AlreadyExists => "AlreadyExists",
            Code::PermissionDenied => "PermissionDenied",
            Code::ResourceExhausted => "ResourceExhausted",
            Code::FailedPrecondition => "FailedPrecondition",
            Code::Aborted => "Aborted",
            Code::OutOfRange => "OutOfRange",
            Code::Unimplemented => "Unimplemented",
            Code::Internal => "Internal",
            Code::Unavailable => "Unavailable",
            Code::DataLoss => "DataLoss",
            Code::Unauthenticated => "Unauthenticated",
        }
    }
}

/// A gRPC call's outcome other than success: a code and a human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub message: String,
}

impl Status {
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> Status {
        Status::new(Code::Internal, message)
    }

    pub fn unimplemented(message: impl Into<String>) -> Status {
        Status::new(Code::Unimplemented, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Status {
        Status::new(Code::Unavailable, message)
    }

    pub fn invalid_argument(message: impl Into<String>) -> Status {
        Status::new(Code::InvalidArgument, message)
    }

    /// etcd's status for a node error: same code, same text.
    pub fn from_wire(error: &wire::Error) -> Status {
        use wire::Error as E;
        use Code as C;
        let code = match error {
            E::EmptyKey
            | E::KeyNotFound
            | E::ValueProvided
            | E::LeaseProvided
            | E::TooManyOps
            | E::DuplicateKey => C::InvalidArgument,
            E::Compacted | E::FutureRev => C::OutOfRange,
            E::NoSpace => C::ResourceExhausted,
            E::RequestTooLarge => C::InvalidArgument,
            E::TooManyRequests => C::ResourceExhausted,
            E::LeaseNotFound => C::NotFound,
            E::LeaseExist => C::FailedPrecondition,
            E::LeaseTtlTooLarge => C::OutOfRange,
            // etcd 3.4 has no gRPC error for it (3.5: "watch ID already
            // exists" is sent as a cancel reason); FailedPrecondition fits.
            E::WatchIdExists => C::FailedPrecondition,
            E::MemberExist | E::PeerUrlExist | E::MemberNotEnoughStarted => C::FailedPrecondition,
            E::MemberBadUrls => C::InvalidArgument,
            E::MemberNotFound => C::NotFound,
            E::MemberNotLearner | E::LearnerNotReady | E::TooManyLearners => C::FailedPrecondition,
            E::RootUserNotExist | E::RootRoleNotExist | E::UserAlreadyExist => {
                C::FailedPrecondition
            }
            E::UserEmpty => C::InvalidArgument,
            E::UserNotFound | E::RoleAlreadyExist | E::RoleNotFound => C::FailedPrecondition,
            E::RoleEmpty => C::InvalidArgument,
            E::AuthFailed => C::InvalidArgument,
            E::PermissionDenied => C::PermissionDenied,
            E::RoleNotGranted | E::PermissionNotGranted | E::AuthNotEnabled => {
                C::FailedPrecondition
            }
            E::InvalidAuthToken => C::Unauthenticated,
            E::InvalidAuthMgmt | E::AuthOldRevision => C::InvalidArgument,
            E::NoLeader => C::Unavailable,
            E::NotLeader => C::FailedPrecondition,
            E::LeaderChanged | E::NotCapable | E::Stopped | E::Timeout => C::Unavailable,
            E::TimeoutDueToLeaderFail | E::TimeoutDueToConnectionLost | E::Unhealthy => {
                C::Unavailable
            }
            E::Corrupt => C::DataLoss,
            E::BadLeaderTransferee => C::FailedPrecondition,
            E::TimeoutLeaderTransfer => C::DeadlineExceeded,
            E::InvalidArgument(_) => C::InvalidArgument,
            E::Unimplemented(_) => C::Unimplemented,
            E::Internal(_) => C::Internal,
            E::Unknown(_) => C::Unknown,
        };
        Status::new(code, error.to_string())
    }

    /// The status for a failed call to the cluster: the node's own error
    /// keeps etcd's code and text; anything else means the shim could not
    /// get an answer, which gRPC clients retry as `Unavailable`.
    pub fn from_client(error: &ClientError) -> Status {
        match error {
            ClientError::Server(e) => Status::from_wire(e),
            ClientError::Connect { endpoint, reason } => Status::unavailable(format!(
                "qed-grpc: cannot reach the qed cluster at {endpoint}: {reason}"
            )),
            ClientError::Timeout => {
                Status::unavailable("qed-grpc: the qed cluster did not answer in time")
            }
            ClientError::Protocol(why) => Status::unavailable(format!(
                "qed-grpc: protocol error talking to the cluster: {why}"
            )),
            ClientError::Closed => Status::unavailable(
                "qed-grpc: connection to the qed cluster closed before the reply arrived",
            ),
        }
    }

    /// The `grpc-status` header value.
    pub fn code_value(&self) -> u8 {
        self.code as u8
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for Status {}

/// Percent-encodes a status message for the `grpc-message` trailer: every
/// byte outside printable ASCII (0x20..=0x7E), and `%` itself, becomes `%XX`.
pub fn encode_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 0xf)]));
        }
    }
    out
}

/// Reverses [`encode_message`]; malformed escapes are kept verbatim, as
/// gRPC-go does.
pub fn decode_message(encoded: &str) -> String {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_codes_for_common_errors() {
        let cases = [
            (
                wire::Error::Compacted,
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                wire::Error::FutureRev,
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                wire::Error::EmptyKey,
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                wire::Error::LeaseNotFound,
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                wire::Error::NoSpace,
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            (
                wire::Error::InvalidAuthToken,
                Code::Unauthenticated,
                "etcdserver: invalid auth token",
            ),
            (
                wire::Error::NoLeader,
                Code::Unavailable,
                "etcdserver: no leader",
            ),
            (
                wire::Error::Corrupt,
                Code::DataLoss,
                "etcdserver: corrupt cluster",
            ),
            (
                wire::Error::PermissionDenied,
                Code::PermissionDenied,
                "etcdserver: permission denied",
            ),
            (
                wire::Error::UserNotFound,
                Code::FailedPrecondition,
                "etcdserver: user name not found",
            ),
        ];
        for (error, code, text) in cases {
            let status = Status::from_wire(&error);
            assert_eq!(status.code, code, "{error:?}");
            assert_eq!(status.message, text);
        }
    }

    #[test]
    fn transport_failures_are_unavailable() {
        for error in [
            ClientError::Timeout,
            ClientError::Closed,
            ClientError::Protocol("x".into()),
            ClientError::Connect {
                endpoint: "e".into(),
                reason: "r".into(),
            },
        ] {
            assert_eq!(Status::from_client(&error).code, Code::Unavailable);
        }
        let compacted = ClientError::Server(wire::Error::Compacted);
        assert_eq!(Status::from_client(&compacted).code, Code::OutOfRange);
    }

    #[test]
    fn unimplemented_names_the_call() {
        let status = Status::from_wire(&wire::Error::Unimplemented("Watch/Watch".into()));
        assert_eq!(status.code, Code::Unimplemented);
        assert!(status.message.contains("Watch/Watch"));
    }

    #[test]
    fn message_percent_encoding_round_trips() {
        let text = "etcdserver: 100% sure\nnon-ascii: é";
        let encoded = encode_message(text);
        assert_eq!(encoded, "etcdserver: 100%25 sure%0Anon-ascii: %C3%A9");
        assert_eq!(decode_message(&encoded), text);
        assert_eq!(decode_message("bad %zz and %4"), "bad %zz and %4");
    }
}
