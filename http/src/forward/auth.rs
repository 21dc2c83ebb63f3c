//! Proxy authentication: HTTP Basic against an htpasswd file.
//!
//! Entries are bcrypt (`$2a$`, `$2b$`, `$2y$`), Apache MD5 (`$apr1$`,
//! `htpasswd`'s default; bcrypt is stronger) or `{SHA}` (base64 SHA-1).
//! bcrypt is slow on purpose (tens of milliseconds), so it runs on the
//! shared blocking pool, never on a worker; each worker then caches the
//! verdict for a credential (keyed by the header value) for `cache_ttl`.
//! At most `MAX_PENDING` verifications wait per worker: past that, new
//! credentials are refused (407) rather than queued without bound.
//! Credentials are never logged, and `Proxy-Authorization` is a hop-by-hop
//! field that never reaches the upstream.

use std::{
    cell::RefCell,
    collections::HashMap,
    rc::Rc,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// Verifications in flight per worker before new credentials are refused.
const MAX_PENDING: usize = 64;
/// Granted credentials cached per worker.
const MAX_GRANTED: usize = 10_000;
/// Refused credentials remembered per worker.
const MAX_REFUSALS: usize = 1_000;
/// The longest `Proxy-Authorization` value looked at; longer ones are refused.
const MAX_CREDENTIAL_BYTES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
enum PasswordHash {
    Bcrypt(String),
    /// Apache's MD5 (`$apr1$`, `htpasswd`'s default): accepted so that
    /// existing files work; bcrypt is stronger.
    Apr1(String),
    Sha1([u8; 20]),
}

/// Users and password hashes from an htpasswd file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Htpasswd {
    users: HashMap<String, PasswordHash>,
}

impl Htpasswd {
    /// Parses htpasswd text; errors name the 1-based line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("line {}: expected user:hash", i + 1))?;
            let hash = if let Some(b64) = hash.strip_prefix("{SHA}") {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| format!("line {}: invalid {{SHA}} hash", i + 1))?;
                PasswordHash::Sha1(
                    bytes
                        .try_into()
                        .map_err(|_| format!("line {}: invalid {{SHA}} hash", i + 1))?,
                )
            } else if hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$") {
                PasswordHash::Bcrypt(hash.to_owned())
            } else if let Some(rest) = hash.strip_prefix("$apr1$") {
                let valid = rest
                    .split_once('$')
                    .is_some_and(|(salt, digest)| !salt.is_empty() && salt.len() <= 8 && digest.len() == 22);
                if !valid {
                    return Err(format!("line {}: invalid $apr1$ hash for user {user:?}", i + 1));
                }
                PasswordHash::Apr1(hash.to_owned())
            } else {
                return Err(format!(
                    "line {}: unsupported hash for user {user:?} (bcrypt: htpasswd -B; also $apr1$ MD5 and {{SHA}})",
                    i + 1
                ));
            };
            users.insert(user.to_owned(), hash);
        }
        Ok(Self { users })
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `user` has an entry.
    pub fn has_user(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }
}

/// A Basic authentication scheme, shared by all workers.
#[derive(Debug, Clone)]
pub struct BasicAuth {
    /// Name of the `[auth.NAME]` section.
    pub name: String,
    /// Realm shown by clients.
    pub realm: String,
    users: Arc<Htpasswd>,
    /// Groups of each user.
    groups: HashMap<String, Vec<String>>,
    /// How long a worker trusts a verified credential.
    pub cache_ttl: Duration,
}

impl BasicAuth {
    /// A scheme over `users`; `groups` maps group names to their users.
    pub fn new(name: String, realm: String, users: Htpasswd, groups: &HashMap<String, Vec<String>>) -> Self {
        let mut by_user: HashMap<String, Vec<String>> = HashMap::new();
        for (group, members) in groups {
            for member in members {
                by_user.entry(member.clone()).or_default().push(group.clone());
            }
        }
        Self {
            name,
            realm,
            users: Arc::new(users),
            groups: by_user,
            cache_ttl: Duration::from_secs(300),
        }
    }

    /// Whether `user` is in the htpasswd file.
    pub fn has_user(&self, user: &str) -> bool {
        self.users.has_user(user)
    }

    /// Whether some user is in group `group`.
    pub fn has_group(&self, group: &str) -> bool {
        self.groups
            .values()
            .any(|groups| groups.iter().any(|g| g == group))
    }

    /// The groups `user` is in.
    pub fn groups_of(&self, user: &str) -> Vec<String> {
        self.groups.get(user).cloned().unwrap_or_default()
    }

    /// The `Proxy-Authenticate` field value of a 407.
    pub fn challenge(&self) -> String {
        format!(
            "Basic realm=\"{}\", charset=\"UTF-8\"",
            self.realm.replace(['"', '\\'], "")
        )
    }
}

/// An authenticated user and their groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// User name.
    pub name: String,
    /// Groups the user is in.
    pub groups: Vec<String>,
}

/// A credential's cache key: the SHA-1 of the header value, so every entry
/// has the same small size whatever a client sends.
type CredentialKey = [u8; 20];

/// A worker's view of a [`BasicAuth`]: the scheme plus its credential caches.
///
/// Granted credentials and refused ones (a known user with a wrong
/// password) are kept apart, each bounded: a flood of bad credentials can
/// fill only the refusals and never evicts users who logged in. Malformed
/// headers and unknown users cost no bcrypt and are not cached.
pub struct Authenticator {
    auth: Arc<BasicAuth>,
    granted: RefCell<HashMap<CredentialKey, (Rc<User>, Instant)>>,
    refused: RefCell<HashMap<CredentialKey, Instant>>,
    /// bcrypt runs queued or running for this worker.
    pending: Arc<AtomicUsize>,
}

/// Counts a bcrypt verification from when it is queued until the blocking
/// pool has finished it: the guard travels with the job, so a client that
/// gives up (closes its connection) does not free its place while the
/// work it started still runs.
struct Pending(Arc<AtomicUsize>);

impl Pending {
    fn enter(count: &Arc<AtomicUsize>) -> Option<Self> {
        // Only the worker increments; the pool only decrements.
        (count.load(Ordering::Acquire) < MAX_PENDING).then(|| {
            count.fetch_add(1, Ordering::AcqRel);
            Pending(Arc::clone(count))
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Authenticator {
    /// A worker's authenticator for `auth`.
    pub fn new(auth: Arc<BasicAuth>) -> Self {
        Self {
            auth,
            granted: RefCell::new(HashMap::new()),
            refused: RefCell::new(HashMap::new()),
            pending: Arc::default(),
        }
    }

    /// The scheme.
    pub fn scheme(&self) -> &BasicAuth {
        &self.auth
    }

    /// The user a `Proxy-Authorization` value proves, or `None` (answer 407).
    pub async fn authenticate(&self, header: Option<&[u8]>) -> Option<Rc<User>> {
        let header = header?;
        if header.len() > MAX_CREDENTIAL_BYTES {
            return None;
        }
        let key: CredentialKey = Sha1::digest(header).into();
        let now = Instant::now();
        if let Some((user, expires)) = self.granted.borrow().get(&key) {
            if *expires > now {
                return Some(user.clone());
            }
        }
        if self
            .refused
            .borrow()
            .get(&key)
            .is_some_and(|expires| *expires > now)
        {
            return None;
        }
        let (name, password) = decode_basic(header)?;
        let hash = self.auth.users.users.get(&name)?.clone();
        let ok = match hash {
            PasswordHash::Sha1(expected) => {
                let got: [u8; 20] = Sha1::digest(password.as_bytes()).into();
                constant_time_eq(&got, &expected)
            }
            PasswordHash::Bcrypt(hash) => {
                // Overloaded: refuse without remembering the refusal.
                let pending = Pending::enter(&self.pending)?;
                let verified = monoio::spawn_blocking(move || {
                    let _pending = pending;
                    bcrypt::verify(password, &hash).unwrap_or(false)
                })
                .await;
                verified.unwrap_or(false)
            }
            PasswordHash::Apr1(hash) => {
                // A thousand MD5 rounds (a fraction of a millisecond): off
                // the worker too, as bcrypt.
                let pending = Pending::enter(&self.pending)?;
                let verified = monoio::spawn_blocking(move || {
                    let _pending = pending;
                    let salt = hash["$apr1$".len()..].split('$').next().unwrap_or_default();
                    constant_time_eq(
                        apr1(password.as_bytes(), salt.as_bytes()).as_bytes(),
                        hash.as_bytes(),
                    )
                })
                .await;
                verified.unwrap_or(false)
            }
        };
        if !ok {
            // Remembered briefly: a client retrying a wrong password does
            // not queue a bcrypt run each time.
            let mut refused = self.refused.borrow_mut();
            if refused.len() >= MAX_REFUSALS {
                refused.clear();
            }
            refused.insert(key, now + Duration::from_secs(2));
            return None;
        }
        let user = Rc::new(User {
            groups: self.auth.groups.get(&name).cloned().unwrap_or_default(),
            name,
        });
        let mut granted = self.granted.borrow_mut();
        if granted.len() >= MAX_GRANTED {
            granted.retain(|_, (_, expires)| *expires > now);
            if granted.len() >= MAX_GRANTED {
                granted.clear();
            }
        }
        granted.insert(key, (user.clone(), now + self.auth.cache_ttl));
        Some(user)
    }
}

/// `Basic base64(user:password)` → (user, password).
/// Apache's `$apr1$` MD5-crypt of `password` with `salt` (at most 8
/// bytes are used), as `htpasswd -m` writes it.
fn apr1(password: &[u8], salt: &[u8]) -> String {
    use md5::{Digest, Md5};
    const MAGIC: &[u8] = b"$apr1$";
    const ITOA64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let salt = &salt[..salt.len().min(8)];
    let alternate: [u8; 16] = Md5::new()
        .chain_update(password)
        .chain_update(salt)
        .chain_update(password)
        .finalize()
        .into();
    let mut ctx = Md5::new()
        .chain_update(password)
        .chain_update(MAGIC)
        .chain_update(salt);
    let mut left = password.len();
    while left > 0 {
        let n = left.min(16);
        ctx.update(&alternate[..n]);
        left -= n;
    }
    let mut bits = password.len();
    while bits > 0 {
        if bits & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        bits >>= 1;
    }
    let mut digest: [u8; 16] = ctx.finalize().into();
    for round in 0..1000 {
        let mut ctx = Md5::new();
        if round & 1 == 1 {
            ctx.update(password);
        } else {
            ctx.update(digest);
        }
        if round % 3 != 0 {
            ctx.update(salt);
        }
        if round % 7 != 0 {
            ctx.update(password);
        }
        if round & 1 == 1 {
            ctx.update(digest);
        } else {
            ctx.update(password);
        }
        digest = ctx.finalize().into();
    }
    let mut out = String::with_capacity(37);
    out.push_str("$apr1$");
    out.push_str(&String::from_utf8_lossy(salt));
    out.push('$');
    let mut push = |mut value: u32, count: usize| {
        for _ in 0..count {
            out.push(char::from(ITOA64[(value & 0x3f) as usize]));
            value >>= 6;
        }
    };
    let d = |i: usize| u32::from(digest[i]);
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        push(d(a) << 16 | d(b) << 8 | d(c), 4);
    }
    push(d(11), 2);
    out
}

fn decode_basic(header: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let (scheme, token) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user_pass: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
        .into_bytes()
    }

    fn sha_line(user: &str, password: &str) -> String {
        let digest = Sha1::digest(password.as_bytes());
        format!(
            "{user}:{{SHA}}{}",
            base64::engine::general_purpose::STANDARD.encode(digest)
        )
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .attach_thread_pool(Box::new(monoio::blocking::DefaultThreadPool::new(1)))
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn apache_md5_hashes_verify() {
        // `openssl passwd -apr1 -salt saltsalt password`
        assert_eq!(
            apr1(b"password", b"saltsalt"),
            "$apr1$saltsalt$yAAkm4libquA.ZWLHbSBq/"
        );
        let users = Htpasswd::parse("carol:$apr1$saltsalt$yAAkm4libquA.ZWLHbSBq/\n").unwrap();
        let auth = Authenticator::new(Arc::new(BasicAuth::new(
            "a".into(),
            "r".into(),
            users,
            &HashMap::new(),
        )));
        assert!(block_on(auth.authenticate(Some(&basic("carol:password")))).is_some());
        assert!(block_on(auth.authenticate(Some(&basic("carol:Password")))).is_none());
        assert!(Htpasswd::parse("x:$apr1$$short\n")
            .unwrap_err()
            .contains("invalid $apr1$"));
    }

    #[test]
    fn htpasswd_formats() {
        let bcrypt_hash = bcrypt::hash("s3cret", 4).unwrap();
        let text = format!("# users\n{}\nbob:{bcrypt_hash}\n", sha_line("alice", "wonder"));
        let h = Htpasswd::parse(&text).unwrap();
        assert_eq!(h.len(), 2);
        assert!(h.has_user("bob"));
        let e = Htpasswd::parse("carol:$1$abc$def\n").unwrap_err();
        assert!(e.starts_with("line 1: unsupported hash"), "{e}");
        assert!(Htpasswd::parse("nocolon\n").unwrap_err().starts_with("line 1"));
    }

    #[test]
    fn an_abandoned_bcrypt_run_stays_counted_until_it_ends() {
        // Cost 12: a few hundred milliseconds, far longer than the checks
        // below take.
        let hash = bcrypt::hash("s3cret", 12).unwrap();
        let users = Htpasswd::parse(&format!("bob:{hash}\n")).unwrap();
        let auth = Authenticator::new(Arc::new(BasicAuth::new(
            "staff".into(),
            "ringway".into(),
            users,
            &HashMap::new(),
        )));
        block_on(async {
            let header = basic("bob:s3cret");
            let mut attempt = Box::pin(auth.authenticate(Some(&header)));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(
                std::future::Future::poll(attempt.as_mut(), &mut cx).is_pending(),
                "bcrypt queued"
            );
            // The client goes away: its future is dropped, the job is not.
            drop(attempt);
            assert_eq!(auth.pending.load(Ordering::Acquire), 1, "still counted");
        });
        let mut polls = 0;
        while auth.pending.load(Ordering::Acquire) != 0 && polls < 3000 {
            std::thread::sleep(Duration::from_millis(10));
            polls += 1;
        }
        assert_eq!(
            auth.pending.load(Ordering::Acquire),
            0,
            "released when the job ended"
        );
    }

    #[test]
    fn verifies_sha_and_bcrypt_and_caches() {
        let bcrypt_hash = bcrypt::hash("s3cret", 4).unwrap();
        let users =
            Htpasswd::parse(&format!("{}\nbob:{bcrypt_hash}\n", sha_line("alice", "wonder"))).unwrap();
        let groups = HashMap::from([("admins".to_owned(), vec!["bob".to_owned()])]);
        let auth = Authenticator::new(Arc::new(BasicAuth::new(
            "staff".into(),
            "ringway".into(),
            users,
            &groups,
        )));
        block_on(async {
            let alice = auth.authenticate(Some(&basic("alice:wonder"))).await.unwrap();
            assert_eq!(alice.name, "alice");
            assert!(alice.groups.is_empty());
            let bob = auth.authenticate(Some(&basic("bob:s3cret"))).await.unwrap();
            assert_eq!(bob.groups, ["admins"]);
            assert!(auth.authenticate(Some(&basic("bob:wrong"))).await.is_none());
            assert!(auth.authenticate(Some(&basic("eve:s3cret"))).await.is_none());
            assert!(auth.authenticate(Some(b"Bearer abc")).await.is_none());
            assert!(auth.authenticate(Some(b"Basic !!!")).await.is_none());
            assert!(auth.authenticate(None).await.is_none());
            assert_eq!(auth.granted.borrow().len(), 2, "grants cached");
            assert_eq!(
                auth.refused.borrow().len(),
                1,
                "a known user's wrong password cached briefly"
            );
            let huge = basic(&format!("alice:{}", "x".repeat(2000)));
            assert!(
                auth.authenticate(Some(&huge)).await.is_none(),
                "oversized credentials refused"
            );
            assert_eq!(auth.refused.borrow().len(), 1, "and not cached");
        });
        assert_eq!(
            auth.scheme().challenge(),
            "Basic realm=\"ringway\", charset=\"UTF-8\""
        );
    }
}
