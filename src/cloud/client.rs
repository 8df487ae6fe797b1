//! The HTTPS edge: a reqwest client over rustls (ring) that trusts only the
//! CA configured on the device and presents the device's client certificate
//! (mTLS). Fetches the bundle (with If-None-Match) and posts usage; maps
//! every failure onto the kinds the sync policy branches on.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE, ETAG, IF_NONE_MATCH, RETRY_AFTER};
use reqwest::{Response, Url};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::policy::FailureKind;
use super::wire::{self, Answer, PoolReport, UsageReport, MAX_BODY_BYTES};
use crate::config::Cloud;
use crate::license::bundle::Signed;

/// Why the HTTPS client could not be built from the configured files.
/// Messages name the file, never its contents.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot use [cloud] {key} {}: {reason}", path.display())]
    File {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("[cloud] ca_file {}: certificate refused as a trust anchor: {source}", path.display())]
    Ca {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("[cloud] client_cert and client_key do not make a usable TLS identity ({source}); check that the key belongs to the certificate")]
    Identity {
        #[source]
        source: rustls::Error,
    },
    #[error("cannot build the HTTPS client: {source}")]
    Http {
        #[source]
        source: reqwest::Error,
    },
}

/// Why a request to the cloud failed, sorted by what the caller does next.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// No answer: DNS, refused connection, timeout, broken connection.
    #[error("cannot reach the cloud: {}", chain(.0))]
    Unreachable(#[source] reqwest::Error),
    /// 408, 429, 5xx.
    #[error("the cloud answered HTTP {status}{}", detail(.message))]
    Busy {
        status: u16,
        retry_after: Option<Duration>,
        message: String,
    },
    /// 401/403, or the TLS handshake refused our client certificate.
    #[error("the cloud refused this gateway ({reason}); check that [cloud] client_cert is the certificate the cloud issued for this device and that the device is registered to an organization")]
    Unauthorized { reason: String },
    /// The server certificate does not verify against the configured CA.
    #[error("the cloud's server certificate does not verify against [cloud] ca_file ({reason}); check ca_file and url")]
    UntrustedServer { reason: String },
    /// An answer outside the contract.
    #[error("unexpected answer from the cloud: {0}")]
    Unexpected(String),
    /// A body that does not parse as the contract says.
    #[error("unexpected answer from the cloud: {what}: {source}")]
    Contract {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl CloudError {
    pub fn kind(&self) -> FailureKind {
        match self {
            CloudError::Unreachable(_) | CloudError::Busy { .. } => FailureKind::Transient,
            CloudError::Unauthorized { .. } => FailureKind::Unauthorized,
            CloudError::UntrustedServer { .. } => FailureKind::UntrustedServer,
            CloudError::Unexpected(_) | CloudError::Contract { .. } => FailureKind::Unexpected,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CloudError::Busy { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

/// An error and its sources on one line (reqwest's own message is terse).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// What the bundle endpoint gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// 304: the bundle we hold (named by our ETag) is current.
    NotModified,
    /// 200: a signed bundle's text, not yet verified, and its ETag.
    Bundle { text: String, etag: Option<String> },
}

/// A bundle answer and its time stamp header (not yet verified), if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleAnswer {
    pub fetched: Fetched,
    pub stamp: Option<String>,
}

pub struct CloudClient {
    http: reqwest::Client,
    bundle_url: Url,
    usage_url: Url,
    pools_url: Url,
}

impl CloudClient {
    /// Reads the CA, certificate and key files and builds the client.
    pub fn new(cloud: &Cloud, device: &str) -> Result<Self, SetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs("ca_file", &cloud.ca_file)? {
            roots.add(cert).map_err(|source| SetupError::Ca {
                path: cloud.ca_file.clone(),
                source,
            })?;
        }
        let chain = read_certs("client_cert", &cloud.client_cert)?;
        let key =
            PrivateKeyDer::from_pem_file(&cloud.client_key).map_err(|e| SetupError::File {
                key: "client_key",
                path: cloud.client_key.clone(),
                reason: pem_reason(&e, "private key"),
            })?;
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|source| SetupError::Identity { source })?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|source| SetupError::Identity { source })?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            // The gateway talks to its cloud directly; proxy variables in a
            // service's environment must not reroute the device identity.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(cloud.request_timeout)
            .timeout(cloud.request_timeout)
            .user_agent(concat!("seatgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| SetupError::Http { source })?;
        let join = |path: String| {
            cloud.url.join(&path).map_err(|e| SetupError::File {
                key: "url",
                path: PathBuf::from(cloud.url.as_str()),
                reason: e.to_string(),
            })
        };
        Ok(CloudClient {
            http,
            bundle_url: join(wire::bundle_path(device))?,
            usage_url: join(wire::usage_path(device))?,
            pools_url: join(wire::pools_path(device))?,
        })
    }

    /// GET this device's bundle; `etag` is the one of the bundle we hold,
    /// `nonce` the fresh one the cloud's time stamp must answer.
    pub async fn fetch_bundle(
        &self,
        etag: Option<&str>,
        nonce: &str,
    ) -> Result<BundleAnswer, CloudError> {
        let mut req = self
            .http
            .get(self.bundle_url.clone())
            .header(ACCEPT, "application/json")
            .header(wire::NONCE_HEADER, nonce);
        if let Some(tag) = etag {
            req = req.header(IF_NONE_MATCH, tag);
        }
        let resp = req.send().await.map_err(classify)?;
        let status = resp.status().as_u16();
        let stamp = resp
            .headers()
            .get(wire::STAMP_HEADER)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let answer = |fetched| BundleAnswer { fetched, stamp };
        match wire::answer(status) {
            Answer::NotModified => Ok(answer(Fetched::NotModified)),
            Answer::Bundle => {
                let etag = resp
                    .headers()
                    .get(ETAG)
                    .and_then(|v| v.to_str().ok())
                    .filter(|v| v.len() <= 256)
                    .map(str::to_string);
                let body = read_body(resp).await?;
                let text = String::from_utf8(body)
                    .map_err(|_| CloudError::Unexpected("the bundle is not UTF-8 text".into()))?;
                Ok(answer(Fetched::Bundle { text, etag }))
            }
            _ => Err(refusal(status, resp).await),
        }
    }

    /// POST this device's seat usage.
    pub async fn report_usage(&self, report: &UsageReport) -> Result<(), CloudError> {
        let body = serde_json::to_vec(report).expect("a usage report always serialises");
        let resp = self
            .http
            .post(self.usage_url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(classify)?;
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            return Ok(());
        }
        Err(refusal(status, resp).await)
    }
}

impl CloudClient {
    /// POST this device's pool usage; the answer is the signed slice leases
    /// (not yet verified).
    pub async fn post_pools(&self, reports: &[PoolReport]) -> Result<Vec<Signed>, CloudError> {
        let body = serde_json::to_vec(reports).expect("pool reports always serialise");
        let resp = self
            .http
            .post(self.pools_url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .body(body)
            .send()
            .await
            .map_err(classify)?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(refusal(status, resp).await);
        }
        let body = read_body(resp).await?;
        serde_json::from_slice(&body).map_err(|source| CloudError::Contract {
            what: "the pools answer is not a list of signed leases",
            source,
        })
    }
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, SetupError> {
    let fail = |reason: String| SetupError::File {
        key,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(pem_reason(&e, "certificate")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(pem_reason(&e, "certificate")))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// A PEM error without any line of the file (it may be a key).
fn pem_reason(e: &rustls::pki_types::pem::Error, what: &str) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(io) => io.to_string(),
        Error::NoItemsFound => format!("no PEM {what} in it"),
        _ => format!("not a valid PEM {what}"),
    }
}

/// The error for a non-success status, with the cloud's message if any.
async fn refusal(status: u16, resp: Response) -> CloudError {
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(wire::retry_after);
    let message = read_body(resp)
        .await
        .map(|b| wire::error_message(&b))
        .unwrap_or_default();
    match wire::answer(status) {
        Answer::Unauthorized => CloudError::Unauthorized {
            reason: format!("HTTP {status}{}", detail(&message)),
        },
        Answer::Transient => CloudError::Busy {
            status,
            retry_after,
            message,
        },
        _ => CloudError::Unexpected(format!("HTTP {status}{}", detail(&message))),
    }
}

/// Reads a body up to MAX_BODY_BYTES; a larger one is refused unread.
async fn read_body(mut resp: Response) -> Result<Vec<u8>, CloudError> {
    let too_big =
        || CloudError::Unexpected(format!("the body is larger than {MAX_BODY_BYTES} bytes"));
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_BODY_BYTES as u64)
    {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(classify)? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Sorts a transport error: TLS verdicts on either certificate are not
/// transient; everything else (refused, reset, timeout) is.
fn classify(e: reqwest::Error) -> CloudError {
    match find_tls_error(&e) {
        Some(rustls::Error::InvalidCertificate(c)) => CloudError::UntrustedServer {
            reason: format!("{c:?}"),
        },
        Some(rustls::Error::AlertReceived(alert)) if refuses_our_certificate(*alert) => {
            CloudError::Unauthorized {
                reason: format!("TLS alert {alert:?}: the client certificate was not accepted"),
            }
        }
        _ => CloudError::Unreachable(e),
    }
}

fn refuses_our_certificate(alert: rustls::AlertDescription) -> bool {
    use rustls::AlertDescription as A;
    matches!(
        alert,
        A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied
            | A::CertificateRequired
            // What rustls servers send when our certificate's signature does
            // not verify under a CA of the same name.
            | A::DecryptError
    )
}

/// The rustls error somewhere in a chain; io::Error hides its inner error
/// from `source()`, so look inside it too.
fn find_tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(tls) = find_tls_error(inner) {
                return Some(tls);
            }
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_errors_are_found_inside_io_errors() {
        let tls = rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let outer = Outer(io);
        assert!(matches!(
            find_tls_error(&outer),
            Some(rustls::Error::AlertReceived(
                rustls::AlertDescription::UnknownCA
            ))
        ));
        let plain = Outer(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(find_tls_error(&plain).is_none());
    }

    #[test]
    fn kinds_drive_the_policy() {
        let cases = [
            (
                CloudError::Busy {
                    status: 503,
                    retry_after: Some(Duration::from_secs(9)),
                    message: String::new(),
                },
                FailureKind::Transient,
                Some(Duration::from_secs(9)),
            ),
            (
                CloudError::Unauthorized {
                    reason: "HTTP 403".into(),
                },
                FailureKind::Unauthorized,
                None,
            ),
            (
                CloudError::UntrustedServer {
                    reason: "UnknownIssuer".into(),
                },
                FailureKind::UntrustedServer,
                None,
            ),
            (
                CloudError::Unexpected("x".into()),
                FailureKind::Unexpected,
                None,
            ),
        ];
        for (err, kind, retry) in cases {
            assert_eq!((err.kind(), err.retry_after()), (kind, retry), "{err}");
        }
    }

    #[test]
    fn setup_errors_name_the_file_not_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = |n: &str| dir.path().join(n);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(path("ca.pem"), "not pem").unwrap();
        std::fs::write(
            path("device.key"),
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0IHNlY3JldA==\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let cloud = Cloud {
            url: Url::parse("https://cloud.example/").unwrap(),
            ca_file: path("ca.pem"),
            client_cert: path("device.crt"),
            client_key: path("device.key"),
            poll_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
        };
        let err = |c: &Cloud| CloudClient::new(c, "ESG-A1").err().unwrap().to_string();
        let e = err(&cloud);
        assert!(
            e.contains("[cloud] ca_file") && e.contains("no PEM certificate"),
            "{e}"
        );
        std::fs::write(path("ca.pem"), ca.pem()).unwrap();
        let e = err(&cloud);
        assert!(
            e.contains("[cloud] client_cert") && e.contains("device.crt"),
            "{e}"
        );
        std::fs::write(path("device.crt"), ca.pem()).unwrap();
        let e = err(&cloud);
        assert!(e.contains("client_key") && !e.contains("c2Vj"), "{e}");
        std::fs::write(path("device.key"), ca_key.serialize_pem()).unwrap();
        assert!(CloudClient::new(&cloud, "ESG-A1").is_ok());
    }
}
