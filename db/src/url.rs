//! Database URLs: their shape per backend, checked before anything is stored or opened, and
//! the TLS options of a MySQL URL.
//!
//! A MySQL URL is `mysql://[USER[:PASSWORD]@]HOST[:PORT]/DB[?PARAMS]`. TLS is off unless the
//! URL asks for it, with MySQL's own option names as query parameters:
//!
//! - `ssl-mode=disabled|required|verify-ca|verify-identity` (MySQL's `--ssl-mode`;
//!   underscores and upper case are accepted too): `required` encrypts without checking the
//!   server's certificate, `verify-ca` checks that a trusted CA signed it, `verify-identity`
//!   also checks that it names the host of the URL.
//! - `ssl-ca=/path/ca.pem`: the CA (PEM) to trust instead of the built-in web roots; alone it
//!   means `verify-ca`, as with the MySQL client.
//!
//! These two are taken out of the URL before the rest goes to mysql_async, which knows its own
//! parameters (`pool_max`, ...) and refuses unknown ones.

use std::path::PathBuf;

use mysql_async::{Opts, SslOpts};

/// How a MySQL connection uses TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plaintext (the default).
    Disabled,
    /// Encrypted; the server's certificate is not checked.
    Required,
    /// Encrypted; the certificate must be signed by a trusted CA.
    VerifyCa,
    /// Encrypted; the certificate must be signed by a trusted CA and name the URL's host.
    VerifyIdentity,
}

impl std::str::FromStr for SslMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().replace('_', "-").as_str() {
            "disabled" => Ok(Self::Disabled),
            "required" => Ok(Self::Required),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-identity" => Ok(Self::VerifyIdentity),
            _ => Err(format!(
                "ssl-mode {:?} is not one of disabled, required, verify-ca, verify-identity",
                crate::text::bounded(text, crate::text::MAX_ECHO)
            )),
        }
    }
}

/// A MySQL URL split into what mysql_async reads and the TLS options it does not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MysqlUrl {
    /// The URL without `ssl-mode` and `ssl-ca`.
    pub url: String,
    pub ssl_mode: SslMode,
    pub ssl_ca: Option<PathBuf>,
}

impl MysqlUrl {
    /// Parses `mysql://[USER[:PASSWORD]@]HOST[:PORT]/DB[?PARAMS]`; errors never hold the URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("mysql://")
            .ok_or("a MySQL url starts with mysql://")?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let Some((authority, db)) = location.rsplit_once('/') else {
            return Err("no database name: expected mysql://USER@HOST:PORT/DB".into());
        };
        let host = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        if host.is_empty() {
            return Err("no host: expected mysql://USER@HOST:PORT/DB".into());
        }
        if db.is_empty() {
            return Err("no database name: expected mysql://USER@HOST:PORT/DB".into());
        }
        let mut ssl_mode = None;
        let mut ssl_ca = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name.replace('_', "-").to_ascii_lowercase().as_str() {
                "ssl-mode" => ssl_mode = Some(value.parse::<SslMode>()?),
                "ssl-ca" if value.is_empty() => return Err("ssl-ca is empty".into()),
                "ssl-ca" => ssl_ca = Some(PathBuf::from(percent_decode(value))),
                _ => kept.push(pair),
            }
        }
        let ssl_mode = match (ssl_mode, &ssl_ca) {
            (Some(SslMode::Disabled), Some(_)) => {
                return Err("ssl-ca is set but ssl-mode is disabled".into());
            }
            (Some(mode), _) => mode,
            (None, Some(_)) => SslMode::VerifyCa,
            (None, None) => SslMode::Disabled,
        };
        let mut stripped = format!("mysql://{location}");
        if !kept.is_empty() {
            stripped.push('?');
            stripped.push_str(&kept.join("&"));
        }
        Ok(Self {
            url: stripped,
            ssl_mode,
            ssl_ca,
        })
    }

    /// Returns mysql_async's options for this URL, TLS included; errors never hold the URL's
    /// secrets.
    pub fn opts(&self) -> Result<Opts, String> {
        let opts = Opts::from_url(&self.url)
            .map_err(|e| crate::text::redact(&e.to_string()).into_owned())?;
        let ssl = match self.ssl_mode {
            SslMode::Disabled => return Ok(opts),
            SslMode::Required => SslOpts::default()
                .with_danger_accept_invalid_certs(true)
                .with_danger_skip_domain_validation(true),
            SslMode::VerifyCa => SslOpts::default().with_danger_skip_domain_validation(true),
            SslMode::VerifyIdentity => SslOpts::default(),
        };
        let ssl = match &self.ssl_ca {
            Some(ca) => ssl
                .with_root_certs(vec![ca.clone().into()])
                .with_disable_built_in_roots(true),
            None => ssl,
        };
        Ok(mysql_async::OptsBuilder::from_opts(opts)
            .ssl_opts(Some(ssl))
            .into())
    }
}

/// Decodes `%XX` escapes (a path in a query parameter); anything malformed stays as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let value = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(value as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks the shape of a database URL for its backend: `mysql://[USER[:PASSWORD]@]HOST[:PORT]/DB`
/// (with valid TLS options) or `sqlite://PATH`. The error names what is missing and never
/// holds the URL.
pub fn check(url: &str) -> Result<(), String> {
    if url.starts_with("mysql://") {
        let parsed = MysqlUrl::parse(url)?;
        parsed.opts().map(drop)
    } else if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            Err("no file path after sqlite://".into())
        } else {
            Ok(())
        }
    } else {
        Err("expected mysql://USER@HOST:PORT/DB or sqlite://PATH".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_need_a_host_and_a_database() {
        assert_eq!(check("mysql://u:p@db:3306/tbird"), Ok(()));
        assert_eq!(check("mysql://db/tbird?pool_max=32"), Ok(()));
        assert_eq!(check("sqlite:///tmp/x.db"), Ok(()));
        for (url, want) in [
            ("mysql://x", "no database name"),
            ("mysql://x/", "no database name"),
            ("mysql://u:p@x", "no database name"),
            ("mysql:///db", "no host"),
            ("mysql://u:p@/db", "no host"),
            ("sqlite://", "no file path"),
            ("postgres://x/y", "expected mysql://"),
            ("mysql://x/db?ssl-mode=maybe", "is not one of"),
            ("mysql://x/db?nonsense=1", "nonsense"),
        ] {
            let err = check(url).expect_err(url);
            assert!(err.contains(want), "{url}: {err}");
        }
        let err = check("mysql://u:hunter2@x").expect_err("no db");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn tls_options_are_read_and_taken_out() {
        let url = MysqlUrl::parse(
            "mysql://u@db:3306/x?ssl-mode=VERIFY_IDENTITY&ssl-ca=/a%20b.pem&pool_max=32",
        )
        .expect("parses");
        assert_eq!(url.ssl_mode, SslMode::VerifyIdentity);
        assert_eq!(url.ssl_ca, Some(PathBuf::from("/a b.pem")));
        assert_eq!(url.url, "mysql://u@db:3306/x?pool_max=32");
        let opts = url.opts().expect("opts");
        let ssl = opts.ssl_opts().expect("tls on");
        assert!(ssl.disable_built_in_roots());
        assert!(!ssl.skip_domain_validation() && !ssl.accept_invalid_certs());

        let plain = MysqlUrl::parse("mysql://u@db/x").expect("parses");
        assert_eq!(
            (plain.ssl_mode, plain.url.as_str()),
            (SslMode::Disabled, "mysql://u@db/x")
        );
        assert!(plain.opts().expect("opts").ssl_opts().is_none());

        let ca_only = MysqlUrl::parse("mysql://u@db/x?ssl_ca=/ca.pem").expect("parses");
        assert_eq!(ca_only.ssl_mode, SslMode::VerifyCa);
        let ssl = ca_only.opts().expect("opts");
        assert!(ssl.ssl_opts().expect("tls").skip_domain_validation());

        let required = MysqlUrl::parse("mysql://u@db/x?ssl-mode=required").expect("parses");
        let ssl = required.opts().expect("opts");
        assert!(ssl.ssl_opts().expect("tls").accept_invalid_certs());
        assert!(MysqlUrl::parse("mysql://u@db/x?ssl-mode=disabled&ssl-ca=/c").is_err());
    }
}
