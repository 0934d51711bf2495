//! Intake's errors, each mapped once to a gRPC status with machine-readable details.

use muster_schema::Violations;
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

/// How many errors one status details (see [`IntakeError::many_to_status`]).
pub const MAX_DETAILED: usize = 50;

/// Why a command was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntakeError {
    /// The request breaks a rule: every broken rule, by field.
    #[error("invalid request: {0}")]
    Invalid(Violations),
    /// An incident or entity the command refers to does not exist.
    #[error("{subject} not found: {description}")]
    NotFound {
        subject: String,
        description: String,
    },
    /// The incident or entity is in a state that forbids the command.
    #[error("{subject}: {description}")]
    Precondition {
        subject: String,
        description: String,
    },
    /// The entity was already created by another request.
    #[error("{subject} already exists: {description}")]
    AlreadyExists {
        subject: String,
        description: String,
    },
    /// The entity's version moved on since `expected_version`.
    #[error("{subject}: {description}")]
    Conflict {
        subject: String,
        description: String,
    },
    /// The log could not confirm the append; retry with the same idempotency key.
    #[error("the log is unavailable, retry with the same idempotency key: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl IntakeError {
    pub fn code(&self) -> Code {
        match self {
            IntakeError::Invalid(_) => Code::InvalidArgument,
            IntakeError::NotFound { .. } => Code::NotFound,
            IntakeError::Precondition { .. } => Code::FailedPrecondition,
            IntakeError::AlreadyExists { .. } => Code::AlreadyExists,
            IntakeError::Conflict { .. } => Code::Aborted,
            IntakeError::Unavailable(_) => Code::Unavailable,
            IntakeError::Internal(_) => Code::Internal,
        }
    }

    pub fn precondition(subject: impl Into<String>, description: impl Into<String>) -> Self {
        IntakeError::Precondition {
            subject: subject.into(),
            description: description.into(),
        }
    }

    pub fn not_found(subject: impl Into<String>, description: impl Into<String>) -> Self {
        IntakeError::NotFound {
            subject: subject.into(),
            description: description.into(),
        }
    }

    /// The same error about bulk item `i`: subjects and fields are prefixed with `items[i]`.
    pub fn in_item(self, i: usize) -> Self {
        let p = |s: String| format!("items[{i}].{s}");
        match self {
            IntakeError::Invalid(vs) => IntakeError::Invalid(Violations(
                vs.0.into_iter()
                    .map(|v| v.under(&format!("items[{i}]")))
                    .collect(),
            )),
            IntakeError::NotFound {
                subject,
                description,
            } => IntakeError::NotFound {
                subject: p(subject),
                description,
            },
            IntakeError::Precondition {
                subject,
                description,
            } => IntakeError::Precondition {
                subject: p(subject),
                description,
            },
            IntakeError::AlreadyExists {
                subject,
                description,
            } => IntakeError::AlreadyExists {
                subject: p(subject),
                description,
            },
            IntakeError::Conflict {
                subject,
                description,
            } => IntakeError::Conflict {
                subject: p(subject),
                description,
            },
            other => other,
        }
    }

    /// The detail list carried by this error (for one error, or several bulk items' errors).
    fn add_details(&self, details: &mut ErrorDetails) {
        match self {
            IntakeError::Invalid(vs) => {
                for v in &vs.0 {
                    details.add_bad_request_violation(v.field.clone(), v.rule.clone());
                }
            }
            IntakeError::NotFound {
                subject,
                description,
            } => {
                details.add_precondition_failure_violation(
                    "NOT_FOUND",
                    subject.clone(),
                    description.clone(),
                );
            }
            IntakeError::Precondition {
                subject,
                description,
            } => {
                details.add_precondition_failure_violation(
                    "STATE",
                    subject.clone(),
                    description.clone(),
                );
            }
            IntakeError::AlreadyExists {
                subject,
                description,
            } => {
                details.add_precondition_failure_violation(
                    "ALREADY_EXISTS",
                    subject.clone(),
                    description.clone(),
                );
            }
            IntakeError::Conflict {
                subject,
                description,
            } => {
                details.add_precondition_failure_violation(
                    "VERSION",
                    subject.clone(),
                    description.clone(),
                );
            }
            IntakeError::Unavailable(_) | IntakeError::Internal(_) => {}
        }
    }

    /// Several errors (of bulk items) as one status, coded by the first. The details list the
    /// first [`MAX_DETAILED`] errors: statuses travel in HTTP/2 headers, and a client drops a
    /// response whose headers exceed its limit (16 KiB by default) as a protocol error, which
    /// would hide every problem behind a transport failure.
    pub fn many_to_status(errors: &[IntakeError]) -> tonic::Status {
        let Some(first) = errors.first() else {
            return tonic::Status::internal("no error to report");
        };
        let mut details = ErrorDetails::new();
        for e in errors.iter().take(MAX_DETAILED) {
            e.add_details(&mut details);
        }
        let message = match errors.len() {
            1 => first.to_string(),
            n if n <= MAX_DETAILED => format!("{} (and {} more problems)", first, n - 1),
            n => format!(
                "{} (and {} more problems; the details list the first {MAX_DETAILED})",
                first,
                n - 1
            ),
        };
        tonic::Status::with_error_details(first.code(), message, details)
    }
}

impl From<IntakeError> for tonic::Status {
    fn from(e: IntakeError) -> Self {
        IntakeError::many_to_status(std::slice::from_ref(&e))
    }
}

impl From<Violations> for IntakeError {
    fn from(v: Violations) -> Self {
        IntakeError::Invalid(v)
    }
}

impl From<muster_schema::Violation> for IntakeError {
    fn from(v: muster_schema::Violation) -> Self {
        IntakeError::Invalid(v.into())
    }
}

impl From<muster_log::ReadError> for IntakeError {
    fn from(e: muster_log::ReadError) -> Self {
        IntakeError::Unavailable(e.to_string())
    }
}
