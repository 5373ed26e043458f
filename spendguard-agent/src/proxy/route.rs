//! Stage two: read the client's first flight and decide — terminate TLS (the SNI is a provider host)
//! or splice bytes untouched (any other SNI, no SNI, not TLS at all). Whatever was read is handed on so
//! it can be replayed: passthrough stays byte-for-byte.

use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

/// A ClientHello larger than this is not one we will parse (post-quantum key shares make them ~2 KB;
/// 64 KiB leaves room for every extension) — such a connection is passed through untouched.
pub const MAX_CLIENT_HELLO: usize = 64 * 1024;
/// How long a client may take to send its ClientHello before we stop waiting and pass it through
/// (a server-speaks-first protocol on 443 must still work).
pub const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Terminate TLS for this provider host.
    Intercept { sni: String },
    /// Relay untouched; `why` is for logs.
    Passthrough { why: &'static str },
}

/// Hosts whose TLS is terminated: exact names, or `*.suffix` for any name under the suffix.
#[derive(Debug, Clone)]
pub struct HostList {
    exact: Vec<String>,
    suffixes: Vec<String>,
}

/// The bundled provider hosts (INTERFACE.md).
pub const DEFAULT_PROVIDER_HOSTS: &[&str] = &[
    "api.openai.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
    "api.mistral.ai",
    "api.groq.com",
    "api.deepseek.com",
    "api.together.xyz",
    "openrouter.ai",
    "api.x.ai",
    "*.openai.azure.com",
];

impl HostList {
    pub fn new<S: AsRef<str>>(hosts: &[S]) -> HostList {
        let mut exact = Vec::new();
        let mut suffixes = Vec::new();
        for h in hosts {
            let h = h.as_ref().trim().trim_end_matches('.').to_ascii_lowercase();
            match h.strip_prefix("*.") {
                Some(s) => suffixes.push(format!(".{s}")),
                None => exact.push(h),
            }
        }
        HostList { exact, suffixes }
    }

    pub fn matches(&self, host: &str) -> bool {
        let h = host.trim_end_matches('.').to_ascii_lowercase();
        self.exact.contains(&h)
            || self
                .suffixes
                .iter()
                .any(|s| h.ends_with(s.as_str()) && h.len() > s.len())
    }
}

/// Reads from `stream` into `buf` (which may already hold bytes read earlier) until a ClientHello is
/// parsed, or it is clear there is none.
pub async fn classify(stream: &mut TcpStream, buf: &mut Vec<u8>, hosts: &HostList) -> Route {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut fed = 0;
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + CLIENT_HELLO_TIMEOUT;
    loop {
        let mut rd: &[u8] = &buf[fed..];
        while !rd.is_empty() {
            if acceptor.read_tls(&mut rd).is_err() {
                return Route::Passthrough { why: "not TLS" };
            }
        }
        fed = buf.len();
        if fed > 0 {
            match acceptor.accept() {
                Ok(None) => {}
                Ok(Some(accepted)) => {
                    return match accepted.client_hello().server_name() {
                        Some(sni) if hosts.matches(sni) => Route::Intercept {
                            sni: sni.to_ascii_lowercase(),
                        },
                        Some(_) => Route::Passthrough {
                            why: "SNI is not a provider host",
                        },
                        None => Route::Passthrough { why: "no SNI" },
                    };
                }
                Err(_) => return Route::Passthrough { why: "not TLS" },
            }
        }
        if buf.len() > MAX_CLIENT_HELLO {
            return Route::Passthrough {
                why: "ClientHello too large",
            };
        }
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => {
                return Route::Passthrough {
                    why: "no ClientHello in time",
                }
            }
            Ok(Err(_)) | Ok(Ok(0)) => {
                return Route::Passthrough {
                    why: "client closed before a ClientHello",
                }
            }
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_list_exact_and_wildcards() {
        let h = HostList::new(DEFAULT_PROVIDER_HOSTS);
        assert!(h.matches("api.openai.com"));
        assert!(h.matches("API.OpenAI.com."));
        assert!(h.matches("myres.openai.azure.com"));
        assert!(!h.matches("openai.azure.com"));
        assert!(!h.matches("api.openai.com.evil.example"));
        assert!(!h.matches("example.com"));
    }
}
