//! Head edits: an overlay of changes on a parsed head that the serialiser
//! applies as it writes, so the parsed head stays zero-copy (sozu's header
//! editor is the model).
//!
//! [`HeadEdits`] removes fields by name, appends fields, sets a field
//! (removes every line of it, then appends one), and for requests replaces
//! the target. It holds nothing and allocates nothing until a hook uses it.
//! The engine owns framing: fields that frame the message or the connection
//! (Content-Length, Transfer-Encoding, Connection, Upgrade, Keep-Alive, TE,
//! Trailer) cannot be edited, and names and values are checked so an edit
//! cannot split a head.

/// Why an edit was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EditError {
    /// The name is not an HTTP token.
    BadName,
    /// The value holds CR, LF or NUL.
    BadValue,
    /// The field frames the message or the connection: the engine writes it.
    Framing,
}

impl std::fmt::Display for EditError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EditError::BadName => "a header name must be a token",
            EditError::BadValue => "a header value cannot hold CR, LF or NUL",
            EditError::Framing => "framing fields are the proxy's to write",
        })
    }
}

impl std::error::Error for EditError {}

/// Changes to a head, applied when it is written.
#[derive(Debug, Default, Clone)]
pub struct HeadEdits {
    /// Lowercased names of the fields to drop, each followed by NUL.
    removed: Vec<u8>,
    /// Bit `n % 64` is set when a removed name is `n` bytes long: most
    /// fields of a head are passed over on their length alone.
    removed_lengths: u64,
    /// The same for the names of the lines added: a removal looks through
    /// them only when one may be its field.
    added_lengths: u64,
    /// The lines to add, each `Name: value\r\n`.
    added: Vec<u8>,
    /// A new request target (kept, with its memory, when cleared).
    target: Vec<u8>,
    /// Whether `target` replaces the head's.
    has_target: bool,
}

const FRAMING: [&[u8]; 7] = [
    b"content-length",
    b"transfer-encoding",
    b"connection",
    b"upgrade",
    b"keep-alive",
    b"te",
    b"trailer",
];

/// Whether `text` is an HTTP token (RFC 9110 section 5.6.2): what a field
/// name or a cookie name must be.
pub fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check_name(name: &str) -> Result<(), EditError> {
    if !is_token(name) {
        return Err(EditError::BadName);
    }
    if FRAMING.iter().any(|f| f.eq_ignore_ascii_case(name.as_bytes())) {
        return Err(EditError::Framing);
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), EditError> {
    if memchr::memchr3(b'\r', b'\n', 0, value).is_some() {
        return Err(EditError::BadValue);
    }
    Ok(())
}

impl HeadEdits {
    /// No edits, as a constant.
    pub const EMPTY: HeadEdits = HeadEdits {
        removed: Vec::new(),
        removed_lengths: 0,
        added_lengths: 0,
        added: Vec::new(),
        target: Vec::new(),
        has_target: false,
    };

    /// No edits.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether there is nothing to apply.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.added.is_empty() && !self.has_target
    }

    /// Forgets every edit, keeping the memory for the next head.
    pub fn clear(&mut self) {
        self.removed.clear();
        self.removed_lengths = 0;
        self.added_lengths = 0;
        self.added.clear();
        self.has_target = false;
    }

    /// Drops every line of field `name` from the head.
    pub fn remove(&mut self, name: &str) -> Result<(), EditError> {
        check_name(name)?;
        self.removed.extend(name.bytes().map(|b| b.to_ascii_lowercase()));
        self.removed.push(0);
        self.removed_lengths |= 1 << (name.len() % 64);
        self.strike_added(name.as_bytes());
        Ok(())
    }

    /// Adds a line `name: value` after the head's own fields.
    pub fn append(&mut self, name: &str, value: &[u8]) -> Result<(), EditError> {
        check_name(name)?;
        check_value(value)?;
        self.added.extend_from_slice(name.as_bytes());
        self.added.extend_from_slice(b": ");
        self.added.extend_from_slice(value);
        self.added.extend_from_slice(b"\r\n");
        self.added_lengths |= 1 << (name.len() % 64);
        Ok(())
    }

    /// Adds a line `name: VALUE` where `value` writes VALUE into the
    /// edits' own buffer (no copy, no allocation once it has grown). A
    /// value with CR, LF or NUL is taken back.
    pub fn append_with(&mut self, name: &str, value: impl FnOnce(&mut Vec<u8>)) -> Result<(), EditError> {
        check_name(name)?;
        let start = self.added.len();
        self.added.extend_from_slice(name.as_bytes());
        self.added.extend_from_slice(b": ");
        let at = self.added.len();
        value(&mut self.added);
        self.end_line(start, at)
    }

    /// Ends the line begun at `start` whose value begins at `at`, or takes
    /// it back when the value holds CR, LF or NUL.
    fn end_line(&mut self, start: usize, at: usize) -> Result<(), EditError> {
        if let Err(e) = check_value(&self.added[at..]) {
            self.added.truncate(start);
            return Err(e);
        }
        self.added.extend_from_slice(b"\r\n");
        // The name ends where its ": " does.
        self.added_lengths |= 1 << ((at - 2 - start) % 64);
        Ok(())
    }

    /// [`HeadEdits::remove`] of a name checked when the configuration was
    /// read, given lowercased and followed by NUL, from a list in which no
    /// earlier edit added the field (see `HeaderRules::merged`).
    pub(crate) fn remove_checked(&mut self, lowercase_name_nul: &[u8]) {
        self.removed.extend_from_slice(lowercase_name_nul);
        self.removed_lengths |= 1 << ((lowercase_name_nul.len() - 1) % 64);
    }

    /// Drops the lines of field `name` that earlier edits added: a later
    /// removal or `set` wins over an earlier edit of the same field.
    fn strike_added(&mut self, name: &[u8]) {
        if self.added_lengths & (1 << (name.len() % 64)) == 0 {
            return;
        }
        let (mut read, mut write) = (0, 0);
        while read < self.added.len() {
            let end = memchr::memchr(b'\n', &self.added[read..]).map_or(self.added.len(), |p| read + p + 1);
            let line = &self.added[read..end];
            let same = line.get(name.len()) == Some(&b':') && line[..name.len()].eq_ignore_ascii_case(name);
            if !same {
                self.added.copy_within(read..end, write);
                write += end - read;
            }
            read = end;
        }
        self.added.truncate(write);
    }

    /// Adds `line` (`Name: value\r\n`, checked when the configuration
    /// was read).
    pub(crate) fn append_line_checked(&mut self, line: &[u8]) {
        self.added.extend_from_slice(line);
        let name_len = memchr::memchr(b':', line).unwrap_or(0);
        self.added_lengths |= 1 << (name_len % 64);
    }

    /// [`HeadEdits::append_with_checked`] of a value known to be valid.
    pub(crate) fn append_with_trusted(&mut self, name_colon: &[u8], value: impl FnOnce(&mut Vec<u8>)) {
        self.added.extend_from_slice(name_colon);
        value(&mut self.added);
        self.added.extend_from_slice(b"\r\n");
        self.added_lengths |= 1 << ((name_colon.len() - 2) % 64);
    }

    /// [`HeadEdits::append_with`] of a name checked when the configuration
    /// was read, given with its `: `.
    pub(crate) fn append_with_checked(
        &mut self,
        name_colon: &[u8],
        value: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), EditError> {
        let start = self.added.len();
        self.added.extend_from_slice(name_colon);
        let at = self.added.len();
        value(&mut self.added);
        self.end_line(start, at)
    }

    /// Replaces every line of field `name` with one `name: value`.
    pub fn set(&mut self, name: &str, value: &[u8]) -> Result<(), EditError> {
        check_value(value)?;
        self.remove(name)?;
        self.append(name, value)
    }

    /// Sends the request with `target` instead of its own (origin-form:
    /// it starts with `/`).
    pub fn set_target(&mut self, target: &[u8]) -> Result<(), EditError> {
        if target.first() != Some(&b'/') || target.iter().any(|&b| b <= b' ' || b == 0x7f) {
            return Err(EditError::BadValue);
        }
        self.target.clear();
        self.target.extend_from_slice(target);
        self.has_target = true;
        Ok(())
    }

    /// Sends the request with the target `target` writes (into the
    /// edits' own buffer); refused, and not applied, unless it is
    /// origin-form.
    pub fn set_target_with(&mut self, target: impl FnOnce(&mut Vec<u8>)) -> Result<(), EditError> {
        self.target.clear();
        target(&mut self.target);
        if self.target.first() != Some(&b'/') || self.target.iter().any(|&b| b <= b' ' || b == 0x7f) {
            self.target.clear();
            self.has_target = false;
            return Err(EditError::BadValue);
        }
        self.has_target = true;
        Ok(())
    }

    /// The replaced target, if any.
    pub fn target(&self) -> Option<&[u8]> {
        self.has_target.then_some(&self.target[..])
    }

    /// Whether the head's field `name` is dropped.
    #[inline]
    pub fn removes(&self, name: &[u8]) -> bool {
        if self.removed_lengths & (1 << (name.len() % 64)) == 0 {
            return false;
        }
        self.removed
            .split(|&b| b == 0)
            .any(|r| !r.is_empty() && r.eq_ignore_ascii_case(name))
    }

    /// The lines to append.
    pub fn added(&self) -> &[u8] {
        &self.added
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_record_removals_and_lines() {
        let mut e = HeadEdits::new();
        assert!(e.is_empty());
        e.remove("X-Secret").unwrap();
        e.set("Server", b"ringway").unwrap();
        e.append("Set-Cookie", b"a=1").unwrap();
        assert!(e.removes(b"x-secret") && e.removes(b"SERVER") && !e.removes(b"x-secre"));
        assert_eq!(e.added(), b"Server: ringway\r\nSet-Cookie: a=1\r\n");
        e.clear();
        assert!(e.is_empty() && !e.removes(b"server"));
        // A later set or removal wins over what earlier edits added.
        e.set("X-Id", b"1").unwrap();
        e.append("X-Other", b"a").unwrap();
        e.set("x-id", b"2").unwrap();
        assert_eq!(e.added(), b"X-Other: a\r\nx-id: 2\r\n");
        e.remove("X-OTHER").unwrap();
        assert_eq!(e.added(), b"x-id: 2\r\n");
    }

    #[test]
    fn edits_cannot_split_a_head_or_touch_framing() {
        let mut e = HeadEdits::new();
        assert_eq!(e.append("X", b"a\r\nInjected: 1"), Err(EditError::BadValue));
        assert_eq!(e.append("X Y", b"a"), Err(EditError::BadName));
        assert_eq!(e.set("Content-Length", b"1"), Err(EditError::Framing));
        assert_eq!(e.remove("transfer-encoding"), Err(EditError::Framing));
        assert_eq!(e.set_target(b"http://x/"), Err(EditError::BadValue));
        assert_eq!(e.set_target(b"/a b"), Err(EditError::BadValue));
        assert!(e.is_empty());
        e.set_target(b"/new?q=1").unwrap();
        assert_eq!(e.target(), Some(&b"/new?q=1"[..]));
    }
}
