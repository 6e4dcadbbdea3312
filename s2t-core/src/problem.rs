//! A user-facing error that knows its SQLSTATE.

use std::fmt;

/// An error a client can act on: which SQLSTATE, what went wrong, the
/// specifics, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub sqlstate: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl Problem {
    pub fn new(sqlstate: &'static str, message: impl Into<String>) -> Self {
        Problem {
            sqlstate,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// `[sqlstate, message, detail, hint]`, the shape the extension hands to
    /// its SQL raiser (PL/pgSQL can raise any SQLSTATE; pgrx only the
    /// server's own).
    pub fn into_parts(self) -> Vec<Option<String>> {
        vec![
            Some(self.sqlstate.to_string()),
            Some(self.message),
            self.detail,
            self.hint,
        ]
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.sqlstate, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problem {}
