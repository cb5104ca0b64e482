//! A minimal blocking `wasi:http` client: one JSON `POST`, the whole answer
//! back, every failure as one readable line naming the origin.

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingResponse, Method, OutgoingBody, OutgoingRequest, RequestOptions,
    Scheme,
};
use wasip2::io::streams::StreamError;

/// Where requests go: `scheme://authority/path`, and their timeouts.
pub struct Endpoint {
    https: bool,
    authority: String,
    path: String,
    /// `scheme://host:port`, as the host's `allow_http` names origins.
    pub origin: String,
    /// The full URL, for messages.
    pub url: String,
    timeout_ns: u64,
}

impl Endpoint {
    /// `base` is `http(s)://host[:port][/path]`; `path` is appended.
    pub fn new(base: &str, path: &str, timeout_ms: u64) -> Result<Endpoint, String> {
        let (https, rest) = if let Some(r) = base.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = base.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(format!("`{base}` is not an http:// or https:// URL"));
        };
        let (authority, base_path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("`{base}` has no host"));
        }
        let has_port = match authority.rfind(':') {
            Some(i) => !authority[i..].contains(']'),
            None => false,
        };
        let scheme = if https { "https" } else { "http" };
        let origin = if has_port {
            format!("{scheme}://{}", authority.to_ascii_lowercase())
        } else {
            let port = if https { 443 } else { 80 };
            format!("{scheme}://{}:{port}", authority.to_ascii_lowercase())
        };
        let path = format!("{base_path}{path}");
        Ok(Endpoint {
            https,
            authority: authority.to_string(),
            url: format!("{scheme}://{authority}{path}"),
            path,
            origin,
            timeout_ns: timeout_ms.saturating_mul(1_000_000),
        })
    }

    /// `POST`s `json` and returns the body of a 2xx answer.
    pub fn post_json(&self, json: &str) -> Result<Vec<u8>, String> {
        let response = self.send(json.as_bytes())?;
        let status = response.status();
        let location = header(&response, "location");
        let body = self.read_body(response)?;
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let mut msg = format!("http: POST {} answered status {status}", self.url);
        if (300..400).contains(&status) {
            msg.push_str(" (a redirect");
            if let Some(to) = location {
                msg.push_str(&format!(" to {to}"));
            }
            msg.push_str("; redirects are not followed)");
        } else {
            let text: String = String::from_utf8_lossy(&body)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .take(200)
                .collect();
            if !text.is_empty() {
                msg.push_str(&format!(": {text}"));
            }
        }
        Err(msg)
    }

    fn send(&self, body: &[u8]) -> Result<IncomingResponse, String> {
        let internal = |what: &str| format!("http: POST {}: cannot {what}", self.url);
        let headers = Fields::from_list(&[
            ("content-type".into(), b"application/json".to_vec()),
            ("accept".into(), b"application/json".to_vec()),
            ("content-length".into(), body.len().to_string().into_bytes()),
        ])
        .map_err(|_| internal("set the headers"))?;
        let request = OutgoingRequest::new(headers);
        request
            .set_method(&Method::Post)
            .map_err(|_| internal("set the method"))?;
        let scheme = if self.https {
            Scheme::Https
        } else {
            Scheme::Http
        };
        request
            .set_scheme(Some(&scheme))
            .map_err(|_| internal("set the scheme"))?;
        request
            .set_authority(Some(&self.authority))
            .map_err(|_| internal("set the host"))?;
        request
            .set_path_with_query(Some(&self.path))
            .map_err(|_| internal("set the path"))?;
        let options = RequestOptions::new();
        // A host may refuse to set some timeout; it keeps its own then.
        let _ = options.set_connect_timeout(Some(self.timeout_ns));
        let _ = options.set_first_byte_timeout(Some(self.timeout_ns));
        let _ = options.set_between_bytes_timeout(Some(self.timeout_ns));

        let outgoing = request.body().map_err(|_| internal("open the body"))?;
        let future =
            outgoing_handler::handle(request, Some(options)).map_err(|e| self.failure(&e))?;
        let sent = self.write_body(outgoing, body);
        future.subscribe().block();
        // A refused or failed request also breaks the body: its error says more.
        match future.get() {
            Some(Ok(Ok(response))) => sent.map(|()| response),
            Some(Ok(Err(e))) => Err(self.failure(&e)),
            Some(Err(())) | None => Err(sent.err().unwrap_or_else(|| internal("get the response"))),
        }
    }

    fn write_body(&self, outgoing: OutgoingBody, body: &[u8]) -> Result<(), String> {
        {
            let stream = outgoing
                .write()
                .map_err(|_| format!("http: POST {}: cannot write the body", self.url))?;
            // At most 4096 bytes per blocking write.
            for chunk in body.chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| self.stream_failure("sending", e))?;
            }
        }
        OutgoingBody::finish(outgoing, None).map_err(|e| self.failure(&e))
    }

    /// The whole body (the host ends it with an error past its size limit).
    fn read_body(&self, response: IncomingResponse) -> Result<Vec<u8>, String> {
        let body = response
            .consume()
            .map_err(|_| format!("http: POST {}: no response body", self.url))?;
        let mut out = vec![];
        {
            let stream = body
                .stream()
                .map_err(|_| format!("http: POST {}: no response body", self.url))?;
            loop {
                match stream.blocking_read(64 << 10) {
                    Ok(bytes) => out.extend_from_slice(&bytes),
                    Err(StreamError::Closed) => break,
                    Err(e) => return Err(self.stream_failure("reading the answer", e)),
                }
            }
        }
        drop(body);
        Ok(out)
    }

    fn stream_failure(&self, doing: &str, e: StreamError) -> String {
        match e {
            StreamError::Closed => format!("http: POST {}: closed while {doing}", self.url),
            StreamError::LastOperationFailed(io) => {
                // Errors of a body in progress come as text (wasmtime's
                // body errors are not `error-code`s): recognize the usual.
                let text = io.to_debug_string();
                let code = wasip2::http::types::http_error_code(&io).or_else(|| {
                    let limit = text
                        .strip_prefix("HTTP response body size exceeds limit: ")
                        .and_then(|t| t.strip_suffix(" bytes"))
                        .and_then(|n| n.parse().ok());
                    if text.starts_with("HTTP response body size exceeds limit") {
                        Some(ErrorCode::HttpResponseBodySize(limit))
                    } else if text.starts_with("connection read timeout") {
                        Some(ErrorCode::ConnectionReadTimeout)
                    } else {
                        None
                    }
                });
                match code {
                    Some(code) => self.failure(&code),
                    None => format!("http: POST {}: failed while {doing}: {text}", self.url),
                }
            }
        }
    }

    /// One line for a `wasi:http` error code.
    fn failure(&self, e: &ErrorCode) -> String {
        let url = &self.url;
        let origin = &self.origin;
        match e {
            ErrorCode::HttpRequestDenied => {
                format!("http: origin {origin} is not in this plugin's allow_http")
            }
            ErrorCode::ConnectionRefused => {
                format!("http: cannot connect to {origin}: connection refused")
            }
            ErrorCode::ConnectionTimeout => {
                format!("http: cannot connect to {origin}: timed out")
            }
            ErrorCode::ConnectionReadTimeout | ErrorCode::HttpResponseTimeout => {
                format!("http: POST {url}: timed out waiting for the answer")
            }
            ErrorCode::HttpResponseBodySize(limit) => {
                let limit = limit.map_or_else(String::new, |n| format!(" of {n} bytes"));
                format!(
                    "http: POST {url}: the answer is longer than the limit{limit} (http_max_response_bytes)"
                )
            }
            ErrorCode::ConnectionLimitReached => {
                format!("http: POST {url}: too many requests in flight (http_max_concurrent)")
            }
            ErrorCode::DnsError(_) | ErrorCode::DnsTimeout => {
                format!("http: cannot resolve the host of {origin}")
            }
            other => format!("http: POST {url}: {other:?}"),
        }
    }
}

/// The first value of a response header, as text.
fn header(response: &IncomingResponse, name: &str) -> Option<String> {
    let values = response.headers().get(name);
    values
        .first()
        .map(|v| String::from_utf8_lossy(v).into_owned())
}
