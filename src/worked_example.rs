//! Checks the worked example of `docs/format.md` byte for byte (filled in with the document).
