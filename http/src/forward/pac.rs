//! The proxy auto-configuration (PAC) file a forward listener serves at
//! `GET /proxy.pac`: a configured file as is, or one generated to send
//! everything through this proxy except the `pac_direct` domains.

use crate::reply::LocalReply;

const CONTENT_TYPE: &str = "application/x-ns-proxy-autoconfig";

/// What the PAC file contains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pac {
    /// A file's contents, served as they are.
    File(String),
    /// Generated: these domains (`.suffix` or exact names) go direct;
    /// everything else through the proxy at the address clients used to
    /// fetch the PAC file (or `fallback` when they sent no Host).
    Generated {
        /// Domains reached without the proxy.
        direct: Vec<String>,
        /// `host:port` of this proxy, when the request has no Host.
        fallback: String,
    },
}

impl Pac {
    /// The path it is served at.
    pub fn path(&self) -> &str {
        "/proxy.pac"
    }

    /// The PAC file for a request whose Host field was `host`.
    pub fn render(&self, host: Option<&[u8]>) -> String {
        match self {
            Pac::File(text) => text.clone(),
            Pac::Generated { direct, fallback } => {
                // The address clients fetched the PAC from, when it is a
                // plain host:port (nothing that could change the script).
                let named = host
                    .and_then(|h| super::host::parse_authority(h, Some(3128)).ok())
                    .map(|d| format!("{}:{}", d.host, d.port));
                let proxy = named.as_deref().unwrap_or(fallback);
                let mut out = String::from("function FindProxyForURL(url, host) {\n");
                for domain in direct {
                    let condition = match domain.strip_prefix('.') {
                        Some(bare) => format!("dnsDomainIs(host, \"{domain}\") || host == \"{bare}\""),
                        None => format!("host == \"{domain}\""),
                    };
                    out.push_str(&format!("  if ({condition}) return \"DIRECT\";\n"));
                }
                out.push_str(&format!("  return \"PROXY {proxy}\";\n}}\n"));
                out
            }
        }
    }

    /// The reply to `GET /proxy.pac`.
    pub fn reply(&self, host: Option<&[u8]>) -> LocalReply {
        LocalReply::new(200, CONTENT_TYPE, self.render(host)).with_header("Vary", "Host")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pac_sends_direct_domains_direct() {
        let pac = Pac::Generated {
            direct: vec![".intranet.example".into(), "wiki.corp".into()],
            fallback: "127.0.0.1:3128".into(),
        };
        let js = pac.render(Some(b"proxy.corp:3128"));
        assert!(js.contains("dnsDomainIs(host, \".intranet.example\") || host == \"intranet.example\""));
        assert!(js.contains("if (host == \"wiki.corp\") return \"DIRECT\";"));
        assert!(js.ends_with("  return \"PROXY proxy.corp:3128\";\n}\n"));
        assert!(pac.render(None).contains("PROXY 127.0.0.1:3128"));
        // A Host that is not a plain host:port is not reflected.
        assert!(pac.render(Some(b"x:1;DIRECT")).contains("PROXY 127.0.0.1:3128"));
    }
}
