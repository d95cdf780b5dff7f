//! Outbound HTTP, with the private-network guard: what `http` steps (and
//! any other request flowgate makes on a flow's behalf) go through.
//!
//! Unless `http.allow_private_networks` is set, requests to loopback,
//! private, link-local (which holds cloud metadata endpoints), shared,
//! unspecified, multicast and reserved addresses are refused. The guard sits
//! in the DNS resolver, so it checks the addresses actually dialled, not the
//! name in the URL; IP-literal URLs and redirects are checked before sending.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Most redirects followed by one request.
const MAX_REDIRECTS: usize = 5;
/// Largest response body kept from an outbound call; the rest is dropped.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// Time allowed to establish a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// True when `ip` is an address flows may not reach without the config's
/// permission: anything but global unicast, and any IPv6 address that embeds
/// or translates to an IPv4 address that would be refused.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => is_forbidden_v6(v6),
    }
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240 // reserved
}

fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = embedded_v4(ip) {
        if is_forbidden_v4(v4) {
            return true;
        }
        // NAT64 to a public address is how IPv6-only networks reach IPv4.
        if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
            return false;
        }
    }
    let global_unicast = (s[0] & 0xe000) == 0x2000;
    !global_unicast // loopback, unspecified, compatible, mapped, ULA, link- and site-local, multicast
        || (s[0] == 0x2001 && s[1] < 0x0200) // IETF assignments: Teredo, benchmarking, ORCHID
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x3fff && s[1] < 0x1000) // documentation
        || s[0] == 0x3ffe // the retired 6bone
}

/// The IPv4 address an IPv6 address carries: mapped, translated,
/// compatible, NAT64, 6to4, Teredo (the client's) or ISATAP.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match ip.segments() {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some(v4(hi, lo)),
        [0, 0, 0, 0, 0xffff, 0, hi, lo] => Some(v4(hi, lo)),
        [0, 0, 0, 0, 0, 0, hi, lo] => Some(v4(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(v4(hi, lo)),
        [0x2002, hi, lo, ..] => Some(v4(hi, lo)),
        [0x2001, 0, _, _, _, _, hi, lo] => Some(v4(!hi, !lo)),
        [_, _, _, _, x, 0x5efe, hi, lo] if x & 0xfdff == 0 => Some(v4(hi, lo)),
        _ => None,
    }
}

/// Why an outbound request was refused before it was sent.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to connect to {host} ({ip}): private, loopback or link-local addresses are not allowed (set http.allow_private_networks)"
)]
pub struct ForbiddenAddress {
    host: String,
    ip: IpAddr,
}

struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some(bad) = addrs.iter().find(|a| is_forbidden(a.ip())) {
                return Err(Box::new(ForbiddenAddress { host, ip: bad.ip() })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Checks an IP-literal host, which never reaches the resolver.
pub fn check_literal(url: &Url, allow_private: bool) -> Result<(), ForbiddenAddress> {
    if allow_private {
        return Ok(());
    }
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        _ => return Ok(()),
    };
    if is_forbidden(ip) {
        return Err(ForbiddenAddress {
            host: url.host_str().unwrap_or_default().to_owned(),
            ip,
        });
    }
    Ok(())
}

/// A client builder with the private-network guard in its resolver
/// (unless `allow_private`), no proxy, a connect timeout and flowgate's
/// user agent. IP-literal URLs bypass resolvers: check them with
/// [`check_literal`] before sending.
pub fn guarded_builder(allow_private: bool) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("flowgate/", env!("CARGO_PKG_VERSION")));
    if allow_private {
        builder
    } else {
        builder.dns_resolver(Arc::new(GuardedResolver))
    }
}

/// The shared outbound client.
#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    allow_private: bool,
}

/// A response as a step sees it.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, lower-case names; repeated headers joined with `, `.
    pub headers: serde_json::Map<String, serde_json::Value>,
    /// Body, parsed when JSON, else text.
    pub body: serde_json::Value,
}

impl HttpClient {
    /// A client; `allow_private` lifts the private-network guard.
    pub fn new(allow_private: bool) -> Self {
        let builder = guarded_builder(allow_private).redirect(reqwest::redirect::Policy::custom(
            move |attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    return attempt.error("too many redirects");
                }
                match check_literal(attempt.url(), allow_private) {
                    Ok(()) => attempt.follow(),
                    Err(e) => attempt.error(e),
                }
            },
        ));
        Self {
            client: builder.build().expect("the HTTP client config is static"),
            allow_private,
        }
    }

    /// Sends a request; `timeout` bounds the whole exchange.
    pub async fn send(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(String, String)],
        query: &[(String, String)],
        body: Option<(Bytes, &'static str)>,
        timeout: Duration,
    ) -> Result<HttpResponse, SendError> {
        let url =
            Url::parse(url).map_err(|e| SendError::Refused(format!("invalid url `{url}`: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(SendError::Refused(format!(
                "url scheme `{}` is not http or https",
                url.scheme()
            )));
        }
        check_literal(&url, self.allow_private).map_err(|e| SendError::Refused(e.to_string()))?;
        let mut request = self.client.request(method, url).timeout(timeout);
        if !query.is_empty() {
            request = request.query(query);
        }
        let mut has_content_type = false;
        for (name, value) in headers {
            has_content_type |= name.eq_ignore_ascii_case("content-type");
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some((bytes, content_type)) = body {
            if !has_content_type {
                request = request.header("content-type", content_type);
            }
            request = request.body(bytes);
        }
        let mut response = request.send().await.map_err(SendError::from_reqwest)?;
        let status = response.status().as_u16();
        let mut header_map = serde_json::Map::new();
        for (name, value) in response.headers() {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            match header_map.get_mut(name.as_str()) {
                Some(serde_json::Value::String(existing)) => {
                    existing.push_str(", ");
                    existing.push_str(&value);
                }
                _ => {
                    header_map.insert(name.as_str().to_owned(), value.into());
                }
            }
        }
        let is_json = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        let mut raw = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(SendError::from_reqwest)? {
            let room = MAX_RESPONSE_BYTES.saturating_sub(raw.len());
            raw.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        let body = match is_json.then(|| serde_json::from_slice(&raw).ok()).flatten() {
            Some(json) => json,
            None if raw.is_empty() => serde_json::Value::Null,
            None => serde_json::Value::String(String::from_utf8_lossy(&raw).into_owned()),
        };
        Ok(HttpResponse {
            status,
            headers: header_map,
            body,
        })
    }
}

/// Why an outbound request did not produce a response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Refused before sending: bad URL or forbidden address. Not retried.
    #[error("{0}")]
    Refused(String),
    /// The attempt timed out. Retryable.
    #[error("the request timed out")]
    Timeout,
    /// Connection or protocol failure. Retryable.
    #[error("{0}")]
    Network(String),
}

impl SendError {
    /// Classifies a failed request: timeout, refused by the guard, or network.
    pub fn from_reqwest(err: reqwest::Error) -> Self {
        if err.is_timeout() {
            return SendError::Timeout;
        }
        // The guard's refusal arrives wrapped in a connect error.
        let mut source: Option<&dyn std::error::Error> = Some(&err);
        while let Some(e) = source {
            if let Some(forbidden) = e.downcast_ref::<ForbiddenAddress>() {
                return SendError::Refused(forbidden.to_string());
            }
            source = e.source();
        }
        let mut message = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(e) = source {
            message.push_str(": ");
            message.push_str(&e.to_string());
            source = e.source();
        }
        SendError::Network(message)
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, SendError::Refused(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_metadata_addresses_are_forbidden() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            // IPv4-compatible, translated, NAT64, 6to4, Teredo and ISATAP
            // forms of loopback, private and metadata addresses.
            "::127.0.0.1",
            "::a9fe:a9fe",
            "::ffff:0:10.0.0.1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::a00:1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:db8::5efe:10.1.2.3",
            "2606:4700::5efe:127.0.0.1",
            // Non-global IPv6: site-local, documentation, benchmarking, ORCHID, 6bone.
            "fec0::1",
            "2001:db8::1",
            "2001:2::1",
            "2001:20::1",
            "3ffe::1",
            "3fff::1",
            "ff02::1",
            "192.0.2.1",
            "203.0.113.9",
        ] {
            assert!(is_forbidden(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2606:4700::5efe:808:808",
        ] {
            assert!(!is_forbidden(ip.parse().unwrap()), "{ip}");
        }
    }
}
