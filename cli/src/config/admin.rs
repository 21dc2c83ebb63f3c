//! `[admin]`: the admin listener (`/metrics`, `/healthz`, `/status`,
//! `/config`), on loopback unless told otherwise, with an optional bearer
//! token.

use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminSection {
    pub(crate) listen: Option<String>,
    pub(crate) token: Option<String>,
}

/// Where the admin listener listens, by default.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";

/// The validated `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Its address.
    pub listen: SocketAddr,
    /// The bearer token every request but `/healthz` must carry, if set.
    pub token: Option<Arc<str>>,
}

impl Validator {
    pub(super) fn admin(&mut self, section: &AdminSection, at: &KeyPath) -> Option<AdminConfig> {
        let text = section.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN);
        let listen = match text.parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => {
                self.problem(
                    at.key("listen"),
                    format!("invalid address {text:?}: expected IP:PORT, like \"{DEFAULT_ADMIN_LISTEN}\""),
                );
                return None;
            }
        };
        let token = match section.token.as_deref() {
            Some("") => {
                self.problem(at.key("token"), "an empty token: remove the key, or give one");
                return None;
            }
            Some(token) if token.len() < 16 => {
                self.problem(
                    at.key("token"),
                    "a token shorter than 16 characters is guessable (try: openssl rand -hex 16)",
                );
                return None;
            }
            Some(token) => Some(Arc::from(token)),
            None => None,
        };
        if !listen.ip().is_loopback() && token.is_none() {
            self.warnings.push(format!(
                "[admin] listens on {listen}, off loopback, with no token: anyone who reaches it reads the \
                 metrics and the configuration (set [admin] token)"
            ));
        }
        Some(AdminConfig { listen, token })
    }
}
