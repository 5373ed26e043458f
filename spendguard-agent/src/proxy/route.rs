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
/// Room made in the buffer before each read while looking for the ClientHello (one TLS record's
/// worth is typical; a larger hello takes several reads).
const READ_CHUNK: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Terminate TLS for this provider host.
    Intercept { sni: String },
    /// A TLS connection whose SNI is not a provider host: relayed untouched, unless the agent's
    /// egress policy refuses it (`proxy::egress`).
    OtherHost { sni: String },
    /// Relay untouched (egress policy permitting); `why` is for logs.
    Passthrough { why: &'static str },
    /// Close the connection: it starts like TLS, but we cannot tell where it goes (a ClientHello
    /// too slow, too large or unparseable). Passing it through would let a tagged workload reach a
    /// provider unmetered just by stalling its handshake, so it fails closed.
    Refuse { why: &'static str },
}

/// First byte of a TLS handshake record.
pub const TLS_HANDSHAKE: u8 = 0x16;

/// Hosts whose TLS is terminated (or, for `allowed_hosts`, passed through): exact names,
/// `*.suffix` for any name under the suffix, or labels with one `*` each that stands for one or
/// more characters of exactly one label (`bedrock-runtime.*.amazonaws.com`,
/// `*-aiplatform.googleapis.com`).
#[derive(Debug, Clone)]
pub struct HostList {
    exact: Vec<String>,
    suffixes: Vec<String>,
    /// Label-wise patterns, each label split at its `*` (`None`: a literal label).
    globs: Vec<Vec<(String, Option<String>)>>,
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
    "bedrock-runtime.*.amazonaws.com",
    "bedrock-runtime-fips.*.amazonaws.com",
    "aiplatform.googleapis.com",
    "*-aiplatform.googleapis.com",
    "api.cohere.com",
    "api.cohere.ai",
    "api.fireworks.ai",
    "api.perplexity.ai",
    "api.cerebras.ai",
    "router.huggingface.co",
];

impl HostList {
    pub fn new<S: AsRef<str>>(hosts: &[S]) -> HostList {
        let mut exact = Vec::new();
        let mut suffixes = Vec::new();
        let mut globs = Vec::new();
        for h in hosts {
            let h = h.as_ref().trim().trim_end_matches('.').to_ascii_lowercase();
            match h.strip_prefix("*.") {
                Some(s) if !s.contains('*') => suffixes.push(format!(".{s}")),
                _ if h.contains('*') => globs.push(
                    h.split('.')
                        .map(|label| match label.split_once('*') {
                            Some((pre, post)) => (pre.to_string(), Some(post.to_string())),
                            None => (label.to_string(), None),
                        })
                        .collect(),
                ),
                _ => exact.push(h),
            }
        }
        HostList {
            exact,
            suffixes,
            globs,
        }
    }

    pub fn matches(&self, host: &str) -> bool {
        let h = host.trim_end_matches('.').to_ascii_lowercase();
        self.exact.contains(&h)
            || self
                .suffixes
                .iter()
                .any(|s| h.ends_with(s.as_str()) && h.len() > s.len())
            || self.globs.iter().any(|g| glob_matches(g, &h))
    }
}

fn glob_matches(pattern: &[(String, Option<String>)], host: &str) -> bool {
    let labels: Vec<&str> = host.split('.').collect();
    labels.len() == pattern.len()
        && labels
            .iter()
            .zip(pattern)
            .all(|(l, (pre, post))| match post {
                None => l == pre,
                Some(post) => {
                    l.len() > pre.len() + post.len()
                        && l.starts_with(pre.as_str())
                        && l.ends_with(post.as_str())
                }
            })
}

/// What the bytes read so far say about the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// The answer; more bytes would not change it.
    Done(Route),
    /// No complete ClientHello yet, and nothing rules one out: read more.
    NeedMore,
}

/// The ClientHello peek without I/O: fed the client's bytes as they arrive, it says when it knows the
/// route. The answer depends only on the bytes, never on how they were split between calls (the
/// `client_hello` fuzz target checks this), and only the first [`MAX_CLIENT_HELLO`] bytes count.
pub struct HelloPeek {
    acceptor: rustls::server::Acceptor,
    fed: usize,
    /// The first byte fed opens a TLS handshake record.
    tls: bool,
    done: Option<Route>,
}

impl Default for HelloPeek {
    fn default() -> Self {
        HelloPeek::new()
    }
}

impl HelloPeek {
    pub fn new() -> HelloPeek {
        HelloPeek {
            acceptor: rustls::server::Acceptor::default(),
            fed: 0,
            tls: false,
            done: None,
        }
    }

    /// Feeds the bytes read since the last call. Once the answer is `Done` it stays the same.
    pub fn feed(&mut self, more: &[u8], hosts: &HostList) -> Decision {
        if let Some(route) = &self.done {
            return Decision::Done(route.clone());
        }
        let route = self.feed_inner(more, hosts);
        if let Decision::Done(route) = &route {
            self.done = Some(route.clone());
        }
        route
    }

    fn feed_inner(&mut self, more: &[u8], hosts: &HostList) -> Decision {
        if self.fed == 0 {
            if let Some(b) = more.first() {
                self.tls = *b == TLS_HANDSHAKE;
            }
        }
        let unparseable = if self.tls {
            Route::Refuse {
                why: "TLS ClientHello that cannot be parsed",
            }
        } else {
            Route::Passthrough { why: "not TLS" }
        };
        let room = MAX_CLIENT_HELLO.saturating_sub(self.fed);
        let mut rd = &more[..more.len().min(room)];
        self.fed += rd.len();
        while !rd.is_empty() {
            // rustls takes at most 4 KiB per read_tls and buffers more than one record only while it
            // is joining a handshake message, so ask after every read, as a socket loop would; fed
            // everything at once, a ClientHello spanning several records would overflow its buffer.
            match self.acceptor.read_tls(&mut rd) {
                Ok(n) if n > 0 => {}
                _ => return Decision::Done(unparseable),
            }
            match self.acceptor.accept() {
                Ok(None) => {}
                Ok(Some(accepted)) => {
                    return Decision::Done(match accepted.client_hello().server_name() {
                        Some(sni) if hosts.matches(sni) => Route::Intercept {
                            sni: sni.to_ascii_lowercase(),
                        },
                        Some(sni) => Route::OtherHost {
                            sni: sni.to_ascii_lowercase(),
                        },
                        None => Route::Passthrough { why: "no SNI" },
                    })
                }
                Err(_) => return Decision::Done(unparseable),
            }
        }
        if self.fed >= MAX_CLIENT_HELLO {
            Decision::Done(Route::Refuse {
                why: "ClientHello too large",
            })
        } else {
            Decision::NeedMore
        }
    }
}

/// Classifies a connection from its first bytes `buf` (everything read so far), without I/O.
pub fn classify_bytes(buf: &[u8], hosts: &HostList) -> Decision {
    HelloPeek::new().feed(buf, hosts)
}

/// Reads from `stream` into `buf` (which may already hold bytes read earlier) until a ClientHello is
/// parsed, or it is clear there is none.
///
/// Reads go straight into `buf` and the peek lives on the heap: this future is part of every
/// connection's task for the connection's whole life (a task is as large as its largest state), so
/// a 4 KiB read array and rustls' acceptor inline would cost each idle keep-alive connection 5 KiB.
pub async fn classify(stream: &mut TcpStream, buf: &mut Vec<u8>, hosts: &HostList) -> Route {
    let mut peek = Box::new(HelloPeek::new());
    let mut decision = peek.feed(buf, hosts);
    let deadline = tokio::time::Instant::now() + CLIENT_HELLO_TIMEOUT;
    loop {
        if let Decision::Done(route) = decision {
            return route;
        }
        let start = buf.len();
        buf.reserve(READ_CHUNK);
        let n = match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            // Fail closed: relaying a stalled handshake would let it reach the provider unmetered.
            Err(_) => {
                return Route::Refuse {
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
        decision = peek.feed(&buf[start..start + n], hosts);
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
        let h = HostList::new(&[
            "bedrock-runtime.*.amazonaws.com",
            "bedrock-runtime-fips.*.amazonaws.com",
        ]);
        assert!(h.matches("bedrock-runtime.us-east-1.amazonaws.com"));
        assert!(h.matches("bedrock-runtime-fips.us-gov-west-1.amazonaws.com"));
        assert!(!h.matches("bedrock-runtime.amazonaws.com"));
        assert!(!h.matches("bedrock-runtime.a.b.amazonaws.com"));
        assert!(!h.matches("bedrock.us-east-1.amazonaws.com"));
        let v = HostList::new(&["*-aiplatform.googleapis.com", "aiplatform.googleapis.com"]);
        assert!(v.matches("us-central1-aiplatform.googleapis.com"));
        assert!(v.matches("aiplatform.googleapis.com"));
        assert!(!v.matches("-aiplatform.googleapis.com"));
        assert!(!v.matches("x.us-central1-aiplatform.googleapis.com"));
        assert!(!v.matches("us-central1-aiplatform.googleapis.com.evil.net"));
    }

    /// Every bundled provider host is served by its own pricing adapter (not the self-hosted
    /// fallback that `extra_provider_hosts` get), and none falls back to a pass-through.
    #[test]
    fn every_bundled_provider_host_has_an_adapter() {
        for pattern in DEFAULT_PROVIDER_HOSTS {
            let host = pattern
                .strip_prefix("*.")
                .map(|s| format!("myresource.{s}"))
                .unwrap_or_else(|| pattern.replace('*', "us-east-1"));
            assert!(
                spendguard_pricing::ProviderId::known_host(&host).is_some(),
                "{pattern} ({host}) has no pricing adapter"
            );
            assert!(
                HostList::new(DEFAULT_PROVIDER_HOSTS).matches(&host),
                "{host}"
            );
        }
    }

    /// A real first flight from rustls for `host`.
    fn client_hello(host: &str) -> Vec<u8> {
        let cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    fn providers() -> HostList {
        HostList::new(DEFAULT_PROVIDER_HOSTS)
    }

    #[test]
    fn provider_sni_is_intercepted() {
        let hello = client_hello("API.OpenAI.com");
        assert_eq!(
            classify_bytes(&hello, &providers()),
            Decision::Done(Route::Intercept {
                sni: "api.openai.com".into()
            })
        );
        let azure = client_hello("myres.openai.azure.com");
        assert!(matches!(
            classify_bytes(&azure, &providers()),
            Decision::Done(Route::Intercept { .. })
        ));
    }

    #[test]
    fn other_sni_is_passed_through() {
        let hello = client_hello("example.com");
        assert_eq!(
            classify_bytes(&hello, &providers()),
            Decision::Done(Route::OtherHost {
                sni: "example.com".into()
            })
        );
        // rustls sends no SNI for an IP address.
        let ip = client_hello("127.0.0.1");
        assert_eq!(
            classify_bytes(&ip, &providers()),
            Decision::Done(Route::Passthrough { why: "no SNI" })
        );
    }

    #[test]
    fn garbage_is_passed_through() {
        let not_tls = Decision::Done(Route::Passthrough { why: "not TLS" });
        let hosts = providers();
        assert_eq!(classify_bytes(b"GET / HTTP/1.1\r\n", &hosts), not_tls);
        assert_eq!(classify_bytes(b"SSH-2.0-OpenSSH_9.6\r\n", &hosts), not_tls);
        // A handshake record that does not hold a ClientHello: TLS we cannot route, so closed
        // (relayed, it could reach a provider unmetered).
        assert_eq!(
            classify_bytes(&[0x16, 3, 1, 0, 4, 2, 0, 0, 0], &hosts),
            Decision::Done(Route::Refuse {
                why: "TLS ClientHello that cannot be parsed"
            })
        );
        assert_eq!(classify_bytes(b"", &hosts), Decision::NeedMore);
    }

    #[test]
    fn split_client_hello_gives_the_same_answer() {
        let hosts = providers();
        let hello = client_hello("api.anthropic.com");
        let whole = classify_bytes(&hello, &hosts);
        assert!(matches!(whole, Decision::Done(Route::Intercept { .. })));
        for at in 0..hello.len() {
            // Fed in two reads, or asked again with everything read so far.
            assert_eq!(
                classify_bytes(&hello[..at], &hosts),
                Decision::NeedMore,
                "split at {at}"
            );
            let mut peek = HelloPeek::new();
            assert_eq!(peek.feed(&hello[..at], &hosts), Decision::NeedMore);
            assert_eq!(peek.feed(&hello[at..], &hosts), whole, "split at {at}");
        }
        // One byte per read.
        let mut peek = HelloPeek::new();
        let last = hello.iter().map(|b| peek.feed(&[*b], &hosts)).last();
        assert_eq!(last, Some(whole));
    }

    #[test]
    fn client_hello_larger_than_the_limit_is_refused() {
        // A ClientHello announcing 65,520 bytes in 16 KiB records: with the record headers it does
        // not fit in MAX_CLIENT_HELLO bytes of the wire (rustls's own 64 KiB handshake buffer may
        // say so first), however the bytes are read.
        let mut payload = vec![1u8, 0x00, 0xff, 0xf0];
        payload.resize(4 + 0xfff0, 0);
        let mut wire = Vec::new();
        for record in payload.chunks(16 * 1024) {
            wire.extend_from_slice(&[0x16, 3, 1]);
            wire.extend_from_slice(&(record.len() as u16).to_be_bytes());
            wire.extend_from_slice(record);
        }
        assert!(wire.len() > MAX_CLIENT_HELLO);
        let hosts = providers();
        assert_eq!(classify_bytes(&wire[..60_000], &hosts), Decision::NeedMore);
        let whole = classify_bytes(&wire, &hosts);
        assert!(
            matches!(whole, Decision::Done(Route::Refuse { .. })),
            "{whole:?}"
        );
        let mut peek = HelloPeek::new();
        let answers: Vec<Decision> = wire.chunks(4096).map(|c| peek.feed(c, &hosts)).collect();
        assert_eq!(answers.last(), Some(&whole));
    }

    #[tokio::test]
    async fn classify_reads_until_the_client_hello_is_complete() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hello = client_hello("api.openai.com");
        let sent = hello.clone();
        let client = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            let mut s = TcpStream::connect(addr).await.unwrap();
            let (a, b) = sent.split_at(sent.len() / 2);
            s.write_all(a).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            s.write_all(b).await.unwrap();
            s
        });
        let (mut stream, _) = listener.accept().await.unwrap();
        // The first three bytes were read earlier (as explicit mode's CONNECT leaves them pending).
        let mut buf = vec![0u8; 3];
        stream.read_exact(&mut buf).await.unwrap();
        let route = classify(&mut stream, &mut buf, &providers()).await;
        drop(client.await.unwrap());
        assert_eq!(
            route,
            Route::Intercept {
                sni: "api.openai.com".into()
            }
        );
        assert_eq!(buf, hello);
    }
}
