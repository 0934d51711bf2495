//! Field-level validation errors: which field broke which rule.
//!
//! Every validating constructor in this crate reports a [`Violation`] naming the field (a path
//! such as `need.location.lat` or `items[3].offer.capacity`) and the rule in words a client
//! developer can act on. Intake turns these into gRPC `BadRequest` field violations.

use std::fmt;

/// One broken rule on one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Path of the field, dot-separated, with `[i]` for list items.
    pub field: String,
    /// The rule that was broken, e.g. "must be between -90 and 90".
    pub rule: String,
}

impl Violation {
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
        }
    }

    /// The same violation seen from an enclosing field: `lat` under `location` is `location.lat`.
    pub fn under(mut self, prefix: &str) -> Self {
        if !prefix.is_empty() {
            self.field = if self.field.is_empty() {
                prefix.to_string()
            } else if self.field.starts_with('[') {
                format!("{prefix}{}", self.field)
            } else {
                format!("{prefix}.{}", self.field)
            };
        }
        self
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.rule)
    }
}

/// A collector for violations, so a request reports every problem at once rather than the first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Violations(pub Vec<Violation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every violation with its field put under `prefix` (see [`Violation::under`]): checks
    /// name fields relative to what they check, and callers prefix them only when one fails.
    pub fn under(self, prefix: &str) -> Self {
        Self(self.0.into_iter().map(|v| v.under(prefix)).collect())
    }

    pub fn push(&mut self, v: Violation) {
        self.0.push(v);
    }

    /// Records the error of `r` (if any) and returns its value.
    pub fn check<T>(&mut self, r: Result<T, Violation>) -> Option<T> {
        match r {
            Ok(t) => Some(t),
            Err(v) => {
                self.0.push(v);
                None
            }
        }
    }

    /// Records every violation of `r` under `prefix` and returns its value.
    pub fn check_all<T>(&mut self, prefix: &str, r: Result<T, Violations>) -> Option<T> {
        match r {
            Ok(t) => Some(t),
            Err(vs) => {
                self.0.extend(vs.0.into_iter().map(|v| v.under(prefix)));
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when nothing was recorded, else every recorded violation.
    pub fn finish<T>(self, value: impl FnOnce() -> T) -> Result<T, Violations> {
        if self.0.is_empty() {
            Ok(value())
        } else {
            Err(self)
        }
    }
}

impl From<Violation> for Violations {
    fn from(v: Violation) -> Self {
        Self(vec![v])
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}
