//! Identifiers: which account, which transaction. Validated once at the edge; inside the
//! crate a value of these types is always well-formed.

use std::fmt;

use super::limits::ID_BYTES_MAX;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {ID_BYTES_MAX} characters, got {0}")]
    TooLong(usize),
    #[error("character {found:?} at position {position} is not one of A-Z a-z 0-9 . _ : -")]
    BadChar { position: usize, found: char },
}

/// Checks the shared id grammar: 1–64 chars of `[A-Za-z0-9._:-]`.
pub fn check_id(s: &str) -> Result<(), IdError> {
    // Fast path for the common, valid case; the slow path below names the problem.
    if !s.is_empty() && s.len() <= ID_BYTES_MAX && s.bytes().all(is_id_byte) {
        return Ok(());
    }
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if let Some((position, found)) = s.chars().enumerate().find(|&(_, c)| !is_id_char(c)) {
        return Err(IdError::BadChar { position, found });
    }
    // Only ASCII passed the loop above, so bytes == chars.
    if s.len() > ID_BYTES_MAX {
        return Err(IdError::TooLong(s.len()));
    }
    Ok(())
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check_id(&s)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
    };
}

id_type!(
    /// An account: the unit of ordering, partitioning and snapshotting.
    AccountId
);
id_type!(
    /// A client-chosen transaction id, applied at most once per account.
    TxnId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_the_documented_alphabet_and_length() {
        assert!(AccountId::new("acct-1.eu_west:7").is_ok());
        assert!(TxnId::new("x".repeat(64)).is_ok());
    }

    #[test]
    fn ids_reject_empty_long_and_foreign_characters_naming_the_problem() {
        assert_eq!(AccountId::new(""), Err(IdError::Empty));
        assert_eq!(TxnId::new("x".repeat(65)), Err(IdError::TooLong(65)));
        assert_eq!(
            AccountId::new("a b"),
            Err(IdError::BadChar {
                position: 1,
                found: ' '
            })
        );
        assert_eq!(
            AccountId::new("é"),
            Err(IdError::BadChar {
                position: 0,
                found: 'é'
            })
        );
    }
}
