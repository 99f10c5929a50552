//! The identifier target: validation against the documented alphabets.

use std::str::FromStr;

use super::Outcome;
use crate::error::Error;
use crate::ids::{DekVersion, MasterKeyId, SecretName, TenantId};

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// The table of `docs/format.md` section 2: (what, longest, extra allowed bytes beyond
/// `A-Z a-z 0-9 _ - .`).
const TENANT: (&str, usize, &[u8]) = ("tenant id", 128, b"_-.");
const SECRET_NAME: (&str, usize, &[u8]) = ("secret name", 256, b"_-./:@");
const MASTER_KEY_ID: (&str, usize, &[u8]) = ("master key id", 256, b"_-./:@+=");

/// Whether the documented rules allow `text`: 1 to `max` bytes, all from the alphabet,
/// not starting with `.`.
fn documented(text: &str, max: usize, extra: &[u8]) -> bool {
    (1..=max).contains(&text.len())
        && !text.starts_with('.')
        && text
            .bytes()
            .all(|b| ALNUM.contains(&b) || extra.contains(&b))
}

/// Parses `data[1..]` as the identifier selected by `data[0]`: `0` [`TenantId`], `1`
/// [`SecretName`], `2` [`MasterKeyId`] (UTF-8 text), `3` [`DekVersion`] (exactly four bytes,
/// big-endian). Checks that an identifier is accepted exactly when the documented rules
/// allow it, that accepted identifiers round-trip through every conversion, and that a
/// rejection is an `InvalidInput` naming the type and never quoting the input.
///
/// # Panics
/// If any of these properties fails.
#[must_use]
pub fn ids(data: &[u8]) -> Outcome {
    let Some((&selector, rest)) = data.split_first() else {
        return Outcome::Rejected;
    };
    if selector == 3 {
        return dek_version(rest);
    }
    let Ok(text) = std::str::from_utf8(rest) else {
        return Outcome::Rejected;
    };
    match selector {
        0 => check::<TenantId>(text, TENANT, |s| TenantId::new(s), TenantId::as_str),
        1 => check::<SecretName>(
            text,
            SECRET_NAME,
            |s| SecretName::new(s),
            SecretName::as_str,
        ),
        2 => check::<MasterKeyId>(
            text,
            MASTER_KEY_ID,
            |s| MasterKeyId::new(s),
            MasterKeyId::as_str,
        ),
        _ => Outcome::Rejected,
    }
}

fn check<T>(
    text: &str,
    (what, max, extra): (&str, usize, &[u8]),
    new: fn(&str) -> Result<T, Error>,
    as_str: fn(&T) -> &str,
) -> Outcome
where
    T: FromStr<Err = Error> + TryFrom<String, Error = Error> + std::fmt::Display + Eq,
{
    let allowed = documented(text, max, extra);
    match new(text) {
        Ok(id) => {
            assert!(
                allowed,
                "an identifier outside the documented rules was accepted"
            );
            assert!(
                as_str(&id) == text,
                "an accepted identifier must keep its text"
            );
            assert!(
                id.to_string() == text,
                "Display must print the identifier as is"
            );
            assert!(
                T::from_str(text).ok().as_ref() == Some(&id)
                    && T::try_from(text.to_owned()).ok().as_ref() == Some(&id),
                "every constructor must agree"
            );
            Outcome::Accepted
        }
        Err(Error::InvalidInput { what: named, .. }) => {
            assert!(
                !allowed,
                "an identifier within the documented rules was rejected"
            );
            assert!(named == what, "the error must name the identifier type");
            Outcome::Rejected
        }
        Err(e) => panic!("identifier rejected with {:?}, not InvalidInput", e.kind()),
    }
}

fn dek_version(rest: &[u8]) -> Outcome {
    let Ok(bytes) = <[u8; 4]>::try_from(rest) else {
        return Outcome::Rejected;
    };
    let number = u32::from_be_bytes(bytes);
    let Some(version) = DekVersion::new(number) else {
        assert!(number == 0, "only 0 is not a DEK version");
        return Outcome::Rejected;
    };
    assert!(
        version.get() == number,
        "a DEK version must keep its number"
    );
    assert!(
        version.to_string() == number.to_string(),
        "Display must print the number"
    );
    assert!(
        version.next().map(DekVersion::get) == number.checked_add(1),
        "next must be the following number, or None after u32::MAX"
    );
    Outcome::Accepted
}
