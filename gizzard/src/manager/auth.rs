//! Who may call the admin service, decided from the request's headers before its body is
//! read: a caller without the token costs the server no decoding, however large its message.
//!
//! With an admin token configured, every call needs a token, reads included (a dump holds the
//! topology and the hosts). The admin token allows everything; an optional read-only token
//! allows only the calls in [`READ_METHODS`]. Without an admin token every caller is allowed:
//! servers refuse to start that way on an address other than loopback (see
//! [`AdminTokens::check_listener`]).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::Either;
use tonic::{
    Status,
    body::Body,
    codegen::{Service, http},
    server::NamedService,
};

/// The ShardManager calls that change nothing: a read-only token may make them.
pub const READ_METHODS: [&str; 11] = [
    "Dump",
    "Lookup",
    "Tree",
    "GetVersion",
    "ListServers",
    "ListRetired",
    "ListSweeps",
    "ListJobs",
    "GetQueueStatus",
    "GetMigration",
    "ListMigrations",
];

/// The tokens a server accepts on its admin service.
#[derive(Clone, Default)]
pub struct AdminTokens {
    admin: Option<String>,
    read_only: Option<String>,
}

impl std::fmt::Debug for AdminTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tokens themselves.
        f.debug_struct("AdminTokens")
            .field("admin", &self.admin.is_some())
            .field("read_only", &self.read_only.is_some())
            .finish()
    }
}

impl AdminTokens {
    /// Returns the tokens, or why they cannot be used: an empty token, a read-only token
    /// without an admin token (writes would be open to all), or both the same.
    pub fn new(admin: Option<String>, read_only: Option<String>) -> Result<Self, String> {
        if admin.as_deref().is_some_and(str::is_empty) {
            return Err("the admin token is empty".into());
        }
        if read_only.as_deref().is_some_and(str::is_empty) {
            return Err("the read-only token is empty".into());
        }
        if read_only.is_some() && admin.is_none() {
            return Err(
                "a read-only token needs an admin token too: without one, every caller may \
                 change the topology"
                    .into(),
            );
        }
        if read_only.is_some() && read_only == admin {
            return Err("the read-only token is the admin token".into());
        }
        Ok(Self { admin, read_only })
    }

    /// Returns the admin token.
    pub fn admin(&self) -> Option<&str> {
        self.admin.as_deref()
    }

    /// Returns the read-only token.
    pub fn read_only(&self) -> Option<&str> {
        self.read_only.as_deref()
    }

    /// Returns whether every caller is allowed (no admin token).
    pub fn is_open(&self) -> bool {
        self.admin.is_none()
    }

    /// Refuses an open admin service on `addr` unless it is loopback: anyone reaching the port
    /// could read the hosts and change the topology.
    pub fn check_listener(&self, addr: SocketAddr) -> Result<(), String> {
        if self.is_open() && !addr.ip().is_loopback() {
            return Err(format!(
                "the admin service would listen on {addr}, reachable from other machines, with \
                 no token: set admin-token-file (--admin-token-file PATH, or admin-token), or \
                 listen on loopback (admin-listen = \"127.0.0.1:7920\")"
            ));
        }
        Ok(())
    }

    /// Returns whether the call `method` (the last part of the gRPC path) may be made by a
    /// request with these headers, or the status that refuses it.
    pub fn check(&self, method: &str, headers: &http::HeaderMap) -> Result<(), Status> {
        let Some(admin) = &self.admin else {
            return Ok(());
        };
        let Some(presented) = bearer(headers) else {
            return Err(Status::unauthenticated(
                "the admin service needs a token: pass --token or --token-file",
            ));
        };
        if constant_time_eq(presented, admin.as_bytes()) {
            return Ok(());
        }
        match &self.read_only {
            Some(read_only) if constant_time_eq(presented, read_only.as_bytes()) => {
                if READ_METHODS.contains(&method) {
                    Ok(())
                } else {
                    Err(Status::permission_denied(format!(
                        "the read-only token cannot call {}: it changes the topology, the \
                         queue or a migration; use the admin token",
                        db::text::bounded(method, db::text::MAX_ECHO)
                    )))
                }
            }
            _ => Err(Status::permission_denied("the bearer token is wrong")),
        }
    }
}

/// Returns the token kept in the file at `path` (one line; a trailing newline is not part of
/// it), so that it need not appear in a command line or the environment. An unreadable or
/// empty file is an error naming the file.
pub fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("read the token file {}: {e}", path.display()))?;
    let token = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if token.is_empty() {
        return Err(format!("the token file {} is empty", path.display()));
    }
    if token.contains(['\n', '\r']) {
        return Err(format!(
            "the token file {} holds more than one line",
            path.display()
        ));
    }
    Ok(token.to_owned())
}

/// Returns the token of an `authorization: Bearer TOKEN` header; the scheme is matched
/// without regard to case (RFC 6750 and RFC 9110).
fn bearer(headers: &http::HeaderMap) -> Option<&[u8]> {
    let value = headers.get(http::header::AUTHORIZATION)?.as_bytes();
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, token) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = token.trim_ascii();
    (!token.is_empty()).then_some(token)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A gRPC service behind the token check: a refused call is answered from its headers, and
/// its body is never read or decoded.
#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    tokens: Arc<AdminTokens>,
}

impl<S> Guarded<S> {
    /// Returns `inner` behind `tokens`.
    pub fn new(inner: S, tokens: AdminTokens) -> Self {
        Self {
            inner,
            tokens: Arc::new(tokens),
        }
    }
}

impl<S> std::fmt::Debug for Guarded<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<http::Request<B>> for Guarded<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Either<std::future::Ready<Result<Self::Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().rsplit('/').next().unwrap_or("");
        match self.tokens.check(method, request.headers()) {
            Ok(()) => Either::Right(self.inner.call(request)),
            // The request, body unread, is dropped here.
            Err(status) => Either::Left(std::future::ready(Ok(status.into_http()))),
        }
    }
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: Option<&str>) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        if let Some(value) = value {
            headers.insert(
                http::header::AUTHORIZATION,
                value.parse().expect("header value"),
            );
        }
        headers
    }

    fn tokens() -> AdminTokens {
        AdminTokens::new(Some("adm1n".into()), Some("r3ad".into())).expect("valid tokens")
    }

    #[test]
    fn every_call_needs_a_token_once_one_is_set() {
        let tokens = tokens();
        for method in ["Dump", "ListJobs", "Lookup", "Apply"] {
            let err = tokens.check(method, &headers(None)).expect_err(method);
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{method}");
            assert!(err.message().contains("pass --token"), "{}", err.message());
            let err = tokens
                .check(method, &headers(Some("Bearer nope")))
                .expect_err(method);
            assert_eq!(err.code(), tonic::Code::PermissionDenied, "{method}");
            tokens
                .check(method, &headers(Some("Bearer adm1n")))
                .expect(method);
        }
        // An open service allows all.
        AdminTokens::default()
            .check("Apply", &headers(None))
            .expect("open");
    }

    #[test]
    fn the_scheme_is_matched_without_case_and_the_token_exactly() {
        let tokens = tokens();
        for value in ["bearer adm1n", "BEARER adm1n", "Bearer   adm1n"] {
            tokens.check("Apply", &headers(Some(value))).expect(value);
        }
        for value in [
            "Basic adm1n",
            "Bearer",
            "Bearer ADM1N",
            "adm1n",
            "Bearer adm1n2",
        ] {
            assert!(
                tokens.check("Apply", &headers(Some(value))).is_err(),
                "{value}"
            );
        }
    }

    #[test]
    fn the_read_only_token_allows_reads_only() {
        let tokens = tokens();
        let read_only = headers(Some("Bearer r3ad"));
        for method in READ_METHODS {
            tokens.check(method, &read_only).expect(method);
        }
        for method in [
            "Apply",
            "Reload",
            "PurgeJobs",
            "StartMigration",
            "CancelMigration",
        ] {
            let err = tokens.check(method, &read_only).expect_err(method);
            assert_eq!(err.code(), tonic::Code::PermissionDenied);
            assert!(
                err.message().contains("read-only token cannot call"),
                "{}",
                err.message()
            );
        }
    }

    #[test]
    fn token_files_hold_one_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("token");
        for (contents, want) in [
            ("s3cret\n", "s3cret"),
            ("s3cret", "s3cret"),
            ("s3 t\r\n", "s3 t"),
        ] {
            std::fs::write(&path, contents).expect("write");
            assert_eq!(read_token_file(&path).as_deref(), Ok(want), "{contents:?}");
        }
        for contents in ["", "\n", "a\nb\n"] {
            std::fs::write(&path, contents).expect("write");
            let err = read_token_file(&path).expect_err(contents);
            assert!(err.contains(&path.display().to_string()), "{err}");
        }
        let err = read_token_file(&dir.path().join("missing")).expect_err("missing");
        assert!(err.starts_with("read the token file"), "{err}");
    }

    #[test]
    fn unusable_token_settings_are_refused() {
        assert!(AdminTokens::new(Some(String::new()), None).is_err());
        assert!(AdminTokens::new(None, Some("r".into())).is_err());
        assert!(AdminTokens::new(Some("t".into()), Some("t".into())).is_err());
        let open = AdminTokens::default();
        let public = SocketAddr::from(([0, 0, 0, 0], 7920));
        let err = open
            .check_listener(public)
            .expect_err("open on all addresses");
        assert!(err.contains("admin-token-file"), "{err}");
        open.check_listener(SocketAddr::from(([127, 0, 0, 1], 7920)))
            .expect("loopback");
        open.check_listener("[::1]:7920".parse().expect("v6"))
            .expect("v6 loopback");
        tokens().check_listener(public).expect("with a token");
        assert!(!format!("{:?}", tokens()).contains("adm1n"));
    }
}
