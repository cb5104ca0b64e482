//! Outgoing HTTP (`wasi:http`) for tool plugins, only to the origins the run
//! file allows (`allow_http`).
//!
//! - The allow list holds exact origins `scheme://host:port`. A request's
//!   origin is compared literally (host case-insensitively, the port explicit
//!   or the scheme's default); names are never resolved, so a name that
//!   resolves to an allowed address is still refused. A refused request fails
//!   with `error-code::HTTP-request-denied` and a log line naming the origin.
//! - Nothing here follows redirects: a 3xx reaches the guest as it is.
//! - Limits ([`SandboxLimits`]): every timeout the guest asks for is capped
//!   at `http_timeout` (connect, first byte, between bytes); a response body
//!   past `http_max_response_bytes` ends with
//!   `error-code::HTTP-response-body-size` after exactly that many bytes;
//!   at most `http_max_concurrent` requests of one plugin are in flight.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::{PluginSpec, SandboxLimits};

/// One allowed origin: scheme, host (lowercase) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub https: bool,
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// Parses `http://host[:port]` or `https://host[:port]` (no path, no
    /// user info; an IPv6 host in brackets). The port defaults to the
    /// scheme's.
    pub fn parse(s: &str) -> Result<Origin, String> {
        let want = "expected `http://host:port` or `https://host:port`";
        let lower = s.to_ascii_lowercase();
        let (https, rest) = if let Some(r) = lower.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = lower.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(format!("`{s}`: {want}"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err(format!("`{s}`: {want} (no path, query or user)"));
        }
        let (host, port) = if rest.starts_with('[') {
            let end = rest
                .find(']')
                .ok_or_else(|| format!("`{s}`: unclosed `[` in the host"))?;
            let host = &rest[..=end];
            if host[1..end].parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("`{s}`: `{host}` is not an IPv6 address"));
            }
            match &rest[end + 1..] {
                "" => (host, None),
                p => match p.strip_prefix(':') {
                    Some(p) => (host, Some(p)),
                    None => return Err(format!("`{s}`: {want}")),
                },
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        let valid_name = |h: &str| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        };
        if !host.starts_with('[') && !valid_name(host) {
            return Err(format!("`{s}`: `{host}` is not a host name or address"));
        }
        let port = match port {
            None => default_port(https),
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("`{s}`: `{p}` is not a port (1-65535)")),
            },
        };
        Ok(Origin {
            https,
            host: host.to_string(),
            port,
        })
    }

    /// The origin a request is addressed to, literally (no name lookup);
    /// `None` when the URI has no usable scheme or host.
    pub fn of(uri: &::http::Uri) -> Option<Origin> {
        let https = match uri.scheme_str()? {
            s if s.eq_ignore_ascii_case("http") => false,
            s if s.eq_ignore_ascii_case("https") => true,
            _ => return None,
        };
        let authority = uri.authority()?;
        Some(Origin {
            https,
            host: authority.host().to_ascii_lowercase(),
            port: authority.port_u16().unwrap_or(default_port(https)),
        })
    }
}

fn default_port(https: bool) -> u16 {
    if https {
        443
    } else {
        80
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// One plugin's HTTP policy, shared by all its instances.
pub(crate) struct HttpGate {
    /// How log lines name the plugin (its file).
    label: String,
    allow: Vec<Origin>,
    timeout: Duration,
    max_body: u64,
    permits: Arc<Semaphore>,
}

impl HttpGate {
    /// The gate of `spec`; an entry of `allow_http` that is not an origin is
    /// an error naming it.
    pub(crate) fn new(spec: &PluginSpec) -> Result<Arc<HttpGate>, String> {
        let allow = spec
            .allow_http
            .iter()
            .map(|o| Origin::parse(o).map_err(|e| format!("allow_http: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let SandboxLimits {
            http_timeout,
            http_max_response_bytes,
            http_max_concurrent,
            ..
        } = spec.limits;
        Ok(Arc::new(HttpGate {
            label: spec.path.display().to_string(),
            allow,
            timeout: http_timeout,
            max_body: http_max_response_bytes,
            permits: Arc::new(Semaphore::new(http_max_concurrent.max(1))),
        }))
    }

    fn allows(&self, origin: &Origin) -> bool {
        self.allow.contains(origin)
    }

    /// The guest's timeouts, each capped at `http_timeout`.
    fn options(&self, asked: Option<RequestOptions>) -> RequestOptions {
        let cap = |t: Option<Duration>| Some(t.map_or(self.timeout, |t| t.min(self.timeout)));
        let asked = asked.unwrap_or_default();
        RequestOptions {
            connect_timeout: cap(asked.connect_timeout),
            first_byte_timeout: cap(asked.first_byte_timeout),
            between_bytes_timeout: cap(asked.between_bytes_timeout),
        }
    }
}

/// The `wasi:http` hooks of one instance: its plugin's gate.
pub(crate) struct HttpHooks(pub(crate) Arc<HttpGate>);

type SendResult = Result<(::http::Response<WasiBody>, IoFuture), Error>;
type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;

impl WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        request: ::http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let gate = self.0.clone();
        let origin = Origin::of(request.uri());
        let Some(origin) = origin.filter(|o| gate.allows(o)) else {
            let shown = Origin::of(request.uri())
                .map_or_else(|| request.uri().to_string(), |o| o.to_string());
            tracing::warn!(
                "plugin {}: HTTP request to {shown} denied: not in its allow_http",
                gate.label
            );
            let denied: SendResult = Err(Error::HttpRequestDenied);
            return Box::new(async { denied });
        };
        let options = gate.options(options);
        Box::new(send(gate, origin, request, options))
    }
}

/// Sends an allowed request within the gate's limits.
async fn send(
    gate: Arc<HttpGate>,
    origin: Origin,
    request: ::http::Request<WasiBody>,
    options: RequestOptions,
) -> SendResult {
    // Wait for a free slot no longer than a request may take.
    let permit = tokio::time::timeout(gate.timeout, gate.permits.clone().acquire_owned())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or(Error::ConnectionLimitReached)?;
    tracing::debug!("plugin {}: HTTP {} {origin}", gate.label, request.method());
    let (response, io) = wasmtime_wasi_http::default_send_request(request, Some(options))
        .await
        .inspect_err(|e| tracing::debug!("plugin {}: HTTP to {origin} failed: {e}", gate.label))?;
    let limit = gate.max_body;
    let response = response.map(|body| {
        CappedBody {
            inner: body.boxed_unsync(),
            left: limit,
            limit,
            over: false,
            _permit: permit,
        }
        .boxed_unsync()
    });
    Ok((response, Box::new(io) as IoFuture))
}

/// A response body that yields at most `limit` bytes, then fails with
/// `HttpResponseBodySize`; it holds its request's concurrency slot.
struct CappedBody {
    inner: WasiBody,
    left: u64,
    limit: u64,
    over: bool,
    _permit: OwnedSemaphorePermit,
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if self.over {
            return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(self.limit)))));
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        let Some(data) = frame.data_ref() else {
            return Poll::Ready(Some(Ok(frame)));
        };
        let len = data.len() as u64;
        if len <= self.left {
            self.left -= len;
            return Poll::Ready(Some(Ok(frame)));
        }
        // Past the limit: pass what fits, then the error.
        self.over = true;
        let fits = self.left as usize;
        self.left = 0;
        if fits == 0 {
            return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(self.limit)))));
        }
        let data = frame.into_data().unwrap_or_default().slice(..fits);
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        !self.over && self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(s: &str) -> Origin {
        Origin::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn origins_parse_with_default_ports() {
        assert_eq!(
            origin("http://127.0.0.1:8000").to_string(),
            "http://127.0.0.1:8000"
        );
        assert_eq!(
            origin("http://Example.com").to_string(),
            "http://example.com:80"
        );
        assert_eq!(
            origin("https://example.com/").to_string(),
            "https://example.com:443"
        );
        assert_eq!(origin("http://[::1]:9000").to_string(), "http://[::1]:9000");
        assert_eq!(origin("https://[::1]").port, 443);
        for bad in [
            "127.0.0.1:8000",
            "ftp://example.com",
            "http://",
            "http://example.com/retrieve",
            "http://user@example.com",
            "http://example.com:0",
            "http://example.com:99999",
            "http://example.com:+80",
            "http://exa mple.com",
            "http://[::1",
            "http://[nothex]:80",
        ] {
            let e = Origin::parse(bad).unwrap_err();
            assert!(e.contains(&format!("`{bad}`")), "{bad}: {e}");
        }
    }

    #[test]
    fn requests_match_literally() {
        let allowed = origin("http://127.0.0.1:8000");
        let of = |u: &str| Origin::of(&u.parse::<::http::Uri>().unwrap()).unwrap();
        assert_eq!(of("http://127.0.0.1:8000/retrieve"), allowed);
        assert_ne!(of("http://127.0.0.1:8001/retrieve"), allowed);
        assert_ne!(of("https://127.0.0.1:8000/"), allowed);
        // A name is not resolved, even one that means the same address.
        assert_ne!(of("http://localhost:8000/"), allowed);
        assert_eq!(of("HTTP://EXAMPLE.com/x"), origin("http://example.com:80"));
        assert_eq!(
            of("https://example.com/x"),
            origin("https://example.com:443")
        );
        assert_ne!(
            of("https://example.com/x"),
            origin("http://example.com:443")
        );
    }

    #[test]
    fn gate_validates_and_caps_timeouts() {
        let spec = PluginSpec::new("x.wasm").allow_http(["http://a:1", "nope"]);
        let e = HttpGate::new(&spec).err().unwrap();
        assert_eq!(
            e,
            "allow_http: `nope`: expected `http://host:port` or `https://host:port`"
        );
        let mut spec = PluginSpec::new("x.wasm").allow_http(["http://a:1"]);
        spec.limits.http_timeout = Duration::from_secs(2);
        let gate = HttpGate::new(&spec).unwrap();
        let o = gate.options(Some(RequestOptions {
            connect_timeout: Some(Duration::from_secs(1)),
            first_byte_timeout: Some(Duration::from_secs(60)),
            between_bytes_timeout: None,
        }));
        assert_eq!(o.connect_timeout, Some(Duration::from_secs(1)));
        assert_eq!(o.first_byte_timeout, Some(Duration::from_secs(2)));
        assert_eq!(o.between_bytes_timeout, Some(Duration::from_secs(2)));
        assert!(gate.allows(&origin("http://A:1")));
    }
}
