//! The HTTPS client instant-acme talks to the CA through: one connection per request (ACME
//! traffic is a handful of requests per issuance), TLS verified against the system roots or
//! `--acme-ca-file`, every request under [`defaults::ACME_HTTP_TIMEOUT`], responses capped at
//! [`defaults::ACME_MAX_RESPONSE`] bytes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, Uri, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::defaults;

/// An [`HttpClient`] over our own TLS configuration.
#[derive(Debug, Clone)]
pub(crate) struct AcmeHttp {
    tls: Arc<ClientConfig>,
}

/// Why one request failed; instant-acme reports it as `Error::Other`.
type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl AcmeHttp {
    /// A client that trusts `tls`'s roots.
    pub(crate) fn new(tls: Arc<ClientConfig>) -> Self {
        Self { tls }
    }

    async fn send(
        tls: Arc<ClientConfig>,
        mut req: Request<BodyWrapper<Bytes>>,
    ) -> Result<Response<Full<Bytes>>, BoxError> {
        let uri = req.uri().clone();
        if uri.scheme_str() != Some("https") {
            return Err(format!("ACME URL {uri} is not https").into());
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("ACME URL {uri} has no host"))?;
        // Bracketed IPv6 literals lose their brackets for connecting and SNI.
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let server_name = ServerName::try_from(bare.clone())?;
        let tcp = TcpStream::connect((bare.as_str(), port)).await?;
        let stream = TlsConnector::from(tls).connect(server_name, tcp).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;

        // HTTP/1.1 wants the origin form on the request line and the authority in Host.
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or(bare);
        *req.uri_mut() = Uri::builder()
            .path_and_query(uri.path_and_query().map_or("/", |p| p.as_str()))
            .build()?;
        req.headers_mut()
            .insert(header::HOST, header::HeaderValue::from_str(&authority)?);

        let exchange = async move {
            let response = sender.send_request(req).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, defaults::ACME_MAX_RESPONSE)
                .collect()
                .await?
                .to_bytes();
            // Dropping the sender lets the connection task finish.
            drop(sender);
            Ok::<_, BoxError>(Response::from_parts(parts, Full::new(body)))
        };
        // The connection is driven alongside the exchange and ends with it.
        let (response, _) = tokio::join!(exchange, conn);
        response
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let tls = Arc::clone(&self.tls);
        Box::pin(async move {
            let uri = req.uri().clone();
            match tokio::time::timeout(defaults::ACME_HTTP_TIMEOUT, Self::send(tls, req)).await {
                Ok(Ok(response)) => Ok(BytesResponse::from(response)),
                Ok(Err(e)) => Err(instant_acme::Error::Other(format!("{uri}: {e}").into())),
                Err(_) => Err(instant_acme::Error::Other(
                    format!("{uri}: no answer within {:?}", defaults::ACME_HTTP_TIMEOUT).into(),
                )),
            }
        })
    }
}
