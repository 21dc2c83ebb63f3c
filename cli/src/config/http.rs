//! `[http]`: limits, timeouts, buffers, the upstream keep-alive pool and
//! the proxy headers every listener starts from.

use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpSection {
    pub(crate) max_header_bytes: Option<usize>,
    pub(crate) max_headers: Option<usize>,
    pub(crate) max_uri_bytes: Option<usize>,
    pub(crate) max_body: Option<SizeValue>,
    pub(crate) min_body_rate: Option<u64>,
    pub(crate) body_rate_window: Option<String>,
    pub(crate) buffer_size: Option<usize>,
    pub(crate) connect_timeout: Option<String>,
    pub(crate) upstream_timeout: Option<String>,
    pub(crate) client_header_timeout: Option<String>,
    pub(crate) keepalive_timeout: Option<String>,
    pub(crate) client_timeout: Option<String>,
    pub(crate) tunnel_idle_timeout: Option<String>,
    pub(crate) upstream_keepalive: Option<usize>,
    pub(crate) upstream_keepalive_timeout: Option<String>,
    pub(crate) forwarded: Option<String>,
    pub(crate) via: Option<bool>,
    pub(crate) via_name: Option<String>,
    pub(crate) allow_trace: Option<bool>,
    pub(crate) splice: Option<bool>,
}

impl Validator {
    pub(super) fn forwarded(
        &mut self,
        path: KeyPath,
        value: Option<&String>,
        default: ForwardedStyle,
    ) -> ForwardedStyle {
        match value.map(String::as_str) {
            None => default,
            Some("x-forwarded") => ForwardedStyle::XForwarded,
            Some("rfc7239") => ForwardedStyle::Rfc7239,
            Some("off") => ForwardedStyle::Off,
            Some(other) => {
                self.problem(
                    path,
                    format!("unknown style {other:?}: expected \"x-forwarded\", \"rfc7239\" or \"off\""),
                );
                default
            }
        }
    }

    pub(super) fn http(&mut self, http: &HttpSection, path: &KeyPath) -> (EngineSettings, PoolSettings) {
        let limits_default = HttpLimits::default();
        let mut limits = limits_default;
        let bounded =
            |v: &mut Self, key: &str, value: Option<usize>, min: usize, max: usize, default: usize| {
                match value {
                    None => default,
                    Some(n) if (min..=max).contains(&n) => n,
                    Some(_) => {
                        v.problem(path.key(key), format!("expected a number from {min} to {max}"));
                        default
                    }
                }
            };
        limits.max_header_bytes = bounded(
            self,
            "max_header_bytes",
            http.max_header_bytes,
            1024,
            1 << 20,
            limits_default.max_header_bytes,
        );
        limits.max_headers = bounded(
            self,
            "max_headers",
            http.max_headers,
            1,
            MAX_HEADERS_CAP,
            limits_default.max_headers,
        );
        limits.max_uri_bytes = bounded(
            self,
            "max_uri_bytes",
            http.max_uri_bytes,
            256,
            1 << 20,
            limits_default.max_uri_bytes,
        );
        limits.max_body = match &http.max_body {
            None | Some(SizeValue::Bytes(0)) => None,
            Some(SizeValue::Bytes(n)) => Some(*n),
            Some(SizeValue::Text(text)) => match parse_size(text) {
                Ok(0) => None,
                Ok(n) => Some(n),
                Err(e) => {
                    self.problem(path.key("max_body"), e);
                    None
                }
            },
        };
        let rate_default = BodyRate::default();
        let window = self.duration(
            path.key("body_rate_window"),
            http.body_rate_window.as_ref(),
            rate_default.window,
        );
        limits.min_body_rate = match http.min_body_rate {
            Some(0) => None,
            rate => {
                if window.is_zero() {
                    self.problem(
                        path.key("body_rate_window"),
                        "must be longer than 0s (min_body_rate = 0 turns the check off)",
                    );
                }
                Some(BodyRate {
                    bytes_per_second: rate.unwrap_or(rate_default.bytes_per_second),
                    window: window.max(Duration::from_millis(1)),
                })
            }
        };
        let buffer_size = bounded(
            self,
            "buffer_size",
            http.buffer_size,
            4096,
            1 << 20,
            DEFAULT_BUFFER_SIZE,
        );
        let t = Timeouts::default();
        let timeouts = Timeouts {
            connect: self.duration(
                path.key("connect_timeout"),
                http.connect_timeout.as_ref(),
                t.connect,
            ),
            upstream_response: self.duration(
                path.key("upstream_timeout"),
                http.upstream_timeout.as_ref(),
                t.upstream_response,
            ),
            client_head: self.duration(
                path.key("client_header_timeout"),
                http.client_header_timeout.as_ref(),
                t.client_head,
            ),
            idle: self.duration(
                path.key("keepalive_timeout"),
                http.keepalive_timeout.as_ref(),
                t.idle,
            ),
            client_io: self.duration(
                path.key("client_timeout"),
                http.client_timeout.as_ref(),
                t.client_io,
            ),
            tunnel_idle: self.duration(
                path.key("tunnel_idle_timeout"),
                http.tunnel_idle_timeout.as_ref(),
                t.tunnel_idle,
            ),
        };
        let pool_default = PoolSettings::default();
        let pool = PoolSettings {
            max_idle_per_server: http
                .upstream_keepalive
                .unwrap_or(pool_default.max_idle_per_server),
            idle_timeout: self.duration(
                path.key("upstream_keepalive_timeout"),
                http.upstream_keepalive_timeout.as_ref(),
                pool_default.idle_timeout,
            ),
        };
        self.via_name = match &http.via_name {
            None => default_via_name(),
            Some(name) => ViaName::new(name).unwrap_or_else(|e| {
                self.problem(path.key("via_name"), e);
                ViaName::default()
            }),
        };
        let proxy_headers = ProxyHeaders {
            forwarded: self.forwarded(
                path.key("forwarded"),
                http.forwarded.as_ref(),
                ForwardedStyle::XForwarded,
            ),
            via: http.via.unwrap_or(true).then(|| self.via_name.clone()),
        };
        let settings = EngineSettings {
            limits,
            timeouts,
            proxy_headers,
            buffer_size,
            scheme: "http",
            splice: http.splice.unwrap_or(true),
            allow_trace: http.allow_trace.unwrap_or(false),
            redirect_https: None,
        };
        (settings, pool)
    }
}
