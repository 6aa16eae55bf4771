//! The etcd store: the [`Store`](crate::Store) API over etcd's v3 gRPC API (etcd-client).
//!
//! Every call is bounded by [`CALL_TIMEOUT`], so nothing hangs while etcd is down. A call that
//! fails for want of a connection drops the client; the next call builds a fresh one, which is
//! how the store comes back after etcd restarts without relying on the channel's own
//! reconnection.
//!
//! [`EtcdAuth`] says how twill proves who it is and checks who etcd is: TLS with the CA that
//! signed etcd's certificate and, for etcd's `--client-cert-auth`, a client certificate
//! (flannel's `--etcd-cafile --etcd-certfile --etcd-keyfile`); and/or etcd's own users
//! (`--etcd-username`, the password never printed). The files are read once, at connect, so a
//! missing or malformed one is an error of the command that names it.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp, WatchOptions, WatchResponse,
};
use tokio::sync::mpsc;
use tonic::Code;

use crate::{Event, KeyValue, LeaseId, Result, StoreError, WatchItem, WatchStream, prefix_end};

/// The longest any one etcd request may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Keys fetched per request when listing, so a large prefix stays under gRPC's message limit.
const PAGE: i64 = 1000;

/// How twill authenticates to etcd. Empty (the default) is plain HTTP without a user.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EtcdAuth {
    /// The CA that signed etcd's server certificate: etcd is spoken to over TLS.
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM) for etcd's `--client-cert-auth`, with its key.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// A user of etcd's own authentication (`etcdctl auth enable`).
    pub username: Option<String>,
    /// Its password. Never printed (`Debug` hides it).
    pub password: Option<String>,
}

impl std::fmt::Debug for EtcdAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAuth")
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

impl EtcdAuth {
    /// True when a TLS file is given: etcd is then spoken to over TLS.
    pub fn wants_tls(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == EtcdAuth::default()
    }

    /// The TLS settings of a client, reading the files; `None` when `tls` is false.
    fn tls_options(&self, tls: bool) -> Result<Option<TlsOptions>> {
        if !tls {
            return Ok(None);
        }
        let bad = |why: String| StoreError::BadUrl(format!("etcd TLS: {why}"));
        let read = |what: &str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| bad(format!("reading the {what} {}: {e}", path.display())))
        };
        let Some(ca) = &self.ca_file else {
            return Err(bad(
                "no CA to check etcd's certificate with: give --etcd-cafile".into(),
            ));
        };
        let ca_pem = read("CA file", ca)?;
        if !String::from_utf8_lossy(&ca_pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(bad(format!("{} holds no PEM certificate", ca.display())));
        }
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca_pem));
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let cert_pem = read("client certificate", cert)?;
                let key_pem = read("client key", key)?;
                if !String::from_utf8_lossy(&cert_pem).contains("-----BEGIN CERTIFICATE-----") {
                    return Err(bad(format!("{} holds no PEM certificate", cert.display())));
                }
                if !String::from_utf8_lossy(&key_pem).contains("PRIVATE KEY-----") {
                    return Err(bad(format!("{} holds no PEM private key", key.display())));
                }
                tls = tls.identity(Identity::from_pem(cert_pem, key_pem));
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(bad(
                    "a client certificate needs its key: give --etcd-keyfile too".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(bad(
                    "a client key needs its certificate: give --etcd-certfile too".into(),
                ));
            }
        }
        Ok(Some(tls))
    }
}

/// A store in an etcd cluster. Clones share one client.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// `HOST:PORT` as given, for messages.
    endpoints: Vec<String>,
    /// TLS settings (files already read) when etcd is spoken to over TLS.
    tls: Option<TlsOptions>,
    /// etcd's own authentication: user and password.
    user: Option<(String, String)>,
    client: Mutex<Option<Client>>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.endpoints)
            .field("tls", &self.inner.tls.is_some())
            .field("user", &self.inner.user.as_ref().map(|(u, _)| u))
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to the etcd cluster at `endpoints` (`HOST:PORT` each) over plain HTTP without
    /// a user and checks that it answers.
    pub async fn connect(endpoints: Vec<String>) -> Result<EtcdStore> {
        Self::connect_with(endpoints, &EtcdAuth::default(), false).await
    }

    /// Connects to the etcd cluster at `endpoints` with `auth`, over TLS when `tls` is true or
    /// `auth` names a TLS file, and checks that it answers (and accepts the credentials).
    pub async fn connect_with(
        endpoints: Vec<String>,
        auth: &EtcdAuth,
        tls: bool,
    ) -> Result<EtcdStore> {
        let tls = auth.tls_options(tls || auth.wants_tls())?;
        let user = match (&auth.username, &auth.password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            (Some(u), None) => Some((u.clone(), String::new())),
            (None, Some(_)) => {
                return Err(StoreError::BadUrl(
                    "an etcd password without a user: give --etcd-username too".into(),
                ));
            }
            (None, None) => None,
        };
        let store = EtcdStore {
            inner: Arc::new(Inner {
                endpoints,
                tls,
                user,
                client: Mutex::new(None),
            }),
        };
        store
            .call("connection check", |mut c| async move {
                c.get("/", Some(GetOptions::new().with_count_only())).await
            })
            .await?;
        Ok(store)
    }

    pub fn describe(&self) -> String {
        let scheme = if self.inner.tls.is_some() {
            "etcds"
        } else {
            "etcd"
        };
        format!("{scheme}://{}", self.inner.endpoints.join(","))
    }

    fn at(&self) -> String {
        format!("etcd at {}", self.inner.endpoints.join(","))
    }

    async fn client(&self) -> Result<Client> {
        if let Some(c) = self.inner.client.lock().expect("not poisoned").clone() {
            return Ok(c);
        }
        let urls: Vec<String> = self
            .inner
            .endpoints
            .iter()
            .map(|e| match self.inner.tls {
                Some(_) => format!("https://{e}"),
                None => format!("http://{e}"),
            })
            .collect();
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            // HTTP/2 pings find a dead peer (a cut network sends no FIN) so a watch breaks
            // instead of waiting forever. etcd answers pings more often than every 5 s, or any
            // ping on a connection without streams, with GOAWAY "too many pings": ping every
            // 10 s and only while a stream (a watch) is open.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(false);
        if let Some(tls) = &self.inner.tls {
            options = options.with_tls(tls.clone());
        }
        if let Some((user, password)) = &self.inner.user {
            // etcd's tokens expire (5 min for simple tokens): get a new one when one has.
            options = options
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        let client =
            match tokio::time::timeout(CONNECT_TIMEOUT, Client::connect(urls, Some(options))).await
            {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(self.map_err("connecting", e)),
                Err(_) => {
                    return Err(StoreError::Unavailable(format!(
                        "{} unreachable: no connection within {}s",
                        self.at(),
                        CONNECT_TIMEOUT.as_secs()
                    )));
                }
            };
        let mut slot = self.inner.client.lock().expect("not poisoned");
        Ok(slot.get_or_insert(client).clone())
    }

    fn drop_client(&self) {
        self.inner.client.lock().expect("not poisoned").take();
    }

    /// Runs one request with the timeout, mapping errors; a connection failure drops the client.
    async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let client = self.client().await?;
        let res = match tokio::time::timeout(CALL_TIMEOUT, f(client)).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => self.map_err(what, e),
            Err(_) => StoreError::Unavailable(format!(
                "{} unreachable: no answer to the {what} within {}s",
                self.at(),
                CALL_TIMEOUT.as_secs()
            )),
        };
        if res.is_retryable() {
            self.drop_client();
        }
        Err(res)
    }

    /// A hint for a connection that broke in a way a TLS mismatch breaks it: a plain client on
    /// a TLS port, or a certificate etcd or we refused. Empty for other failures (etcd down).
    fn tls_hint(&self, e: &str) -> &'static str {
        let lower = e.to_ascii_lowercase();
        let down = [
            "connection refused",
            "timed out",
            "deadline",
            "no route",
            "unreachable",
        ];
        if down.iter().any(|d| lower.contains(d)) {
            return "";
        }
        let tls_refused = ["certificate", "alert", "unknownissuer", "handshake", "tls"];
        match self.inner.tls {
            Some(_) if tls_refused.iter().any(|t| lower.contains(t)) => {
                " (TLS refused: etcd must trust the CA of --etcd-certfile, and --etcd-cafile \
                 must be the CA of etcd's certificate)"
            }
            Some(_) if lower.contains("connection closed") || lower.contains("broken pipe") => {
                " (etcd closed the TLS connection: is --etcd-certfile signed by a CA it \
                 trusts?)"
            }
            None if [
                "broken pipe",
                "connection closed",
                "connection reset",
                "frame",
            ]
            .iter()
            .any(|t| lower.contains(t)) =>
            {
                " (an etcd that speaks TLS needs --etcd-cafile, and --etcd-certfile with \
                 --etcd-keyfile if it asks for client certificates)"
            }
            _ => "",
        }
    }

    fn map_err(&self, what: &str, err: etcd_client::Error) -> StoreError {
        use etcd_client::Error as E;
        let e = error_text(&err);
        match &err {
            E::GRpcStatus(s) if s.message().contains("lease not found") => {
                StoreError::LeaseNotFound
            }
            E::LeaseKeepAliveError(m) if m.contains("lease not found") => StoreError::LeaseNotFound,
            E::GRpcStatus(s)
                if matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied)
                    || [
                        "authentication failed",
                        "user name is empty",
                        "permission denied",
                        "invalid auth token",
                    ]
                    .iter()
                    .any(|m| s.message().contains(m)) =>
            {
                let who = match &self.inner.user {
                    Some((user, _)) => format!("user {user:?}"),
                    None => "a client without a user (give --etcd-username)".to_string(),
                };
                StoreError::Denied(format!("{} refused {who} ({what}): {e}", self.at()))
            }
            E::GRpcStatus(s)
                if matches!(
                    s.code(),
                    Code::Unavailable
                        | Code::DeadlineExceeded
                        | Code::Cancelled
                        | Code::Unknown
                        | Code::Aborted
                ) =>
            {
                StoreError::Unavailable(format!(
                    "{} unreachable ({what}): {e}{}",
                    self.at(),
                    self.tls_hint(&e)
                ))
            }
            E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) => {
                StoreError::Unavailable(format!(
                    "{} unreachable ({what}): {e}{}",
                    self.at(),
                    self.tls_hint(&e)
                ))
            }
            E::InvalidArgs(_) | E::InvalidUri(_) => {
                StoreError::BadUrl(format!("{} ({what}): {e}", self.at()))
            }
            _ => StoreError::Other(format!("{} refused the {what}: {e}", self.at())),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_string();
        let mut resp = self
            .call("get", |mut c| async move { c.get(key, None).await })
            .await?;
        Ok(resp.take_kvs().into_iter().next().map(convert_kv))
    }

    pub async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        // A listing longer than one page reads later pages at the first page's revision. If
        // that revision is compacted in between, start over.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.list_once(prefix).await {
                Err(StoreError::Other(m)) if m.contains("compacted") && attempts < 5 => continue,
                other => return other,
            }
        }
    }

    async fn list_once(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        let (mut from, end) = match prefix_end(prefix.as_bytes()) {
            Some(end) if !prefix.is_empty() => (prefix.as_bytes().to_vec(), end),
            // Every key: etcd's "from key \0 to the end" range.
            _ => (prefix.as_bytes().to_vec(), vec![0]),
        };
        if from.is_empty() {
            from = vec![0];
        }
        let mut out = Vec::new();
        let mut revision = 0;
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let key = from.clone();
            let mut resp = self
                .call(
                    "list",
                    |mut c| async move { c.get(key, Some(options)).await },
                )
                .await?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            let more = resp.more();
            let kvs = resp.take_kvs();
            if let Some(last) = kvs.last() {
                from = last.key().to_vec();
                from.push(0);
            }
            out.extend(kvs.into_iter().map(convert_kv));
            if !more {
                break;
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok((out, revision))
    }

    pub async fn put(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<i64> {
        let (key, value) = (key.to_string(), value.to_vec());
        let resp = self
            .call("put", |mut c| async move {
                c.put(key, value, Some(put_options(lease))).await
            })
            .await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// Runs a one-compare, one-op transaction; the new revision when the compare held.
    async fn txn(&self, what: &str, txn: Txn) -> Result<Option<i64>> {
        let resp = self
            .call(what, |mut c| async move { c.txn(txn).await })
            .await?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map_or(0, |h| h.revision())))
    }

    pub async fn create(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Option<i64>> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, Some(put_options(lease)))]);
        self.txn("create", txn).await
    }

    pub async fn cas(
        &self,
        key: &str,
        expected_mod_revision: i64,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Option<i64>> {
        // An absent key has mod_revision 0 in etcd's compares: never let 0 match it.
        if expected_mod_revision <= 0 {
            return Ok(None);
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key,
                CompareOp::Equal,
                expected_mod_revision,
            )])
            .and_then([TxnOp::put(key, value, Some(put_options(lease)))]);
        self.txn("compare-and-swap", txn).await
    }

    pub async fn put_all(&self, puts: &[(String, Vec<u8>)], deletes: &[String]) -> Result<i64> {
        // A transaction without compares always takes its success branch: one revision for
        // every operation, atomically.
        let ops: Vec<TxnOp> = puts
            .iter()
            .map(|(k, v)| TxnOp::put(k.as_str(), v.as_slice(), None))
            .chain(deletes.iter().map(|k| TxnOp::delete(k.as_str(), None)))
            .collect();
        let count = ops.len();
        let txn = Txn::new().and_then(ops);
        let resp = self
            .call("atomic write", |mut c| async move { c.txn(txn).await })
            .await
            .map_err(|e| txn_limit_hint(e, count))?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    pub async fn put_all_if(
        &self,
        expect: &[(String, i64)],
        puts: &[(String, Vec<u8>)],
        deletes: &[String],
    ) -> Result<Option<i64>> {
        // etcd compares a missing key as having revisions 0.
        let compares: Vec<Compare> = expect
            .iter()
            .map(|(k, r)| match r {
                0 => Compare::create_revision(k.as_str(), CompareOp::Equal, 0),
                r => Compare::mod_revision(k.as_str(), CompareOp::Equal, *r),
            })
            .collect();
        let ops: Vec<TxnOp> = puts
            .iter()
            .map(|(k, v)| TxnOp::put(k.as_str(), v.as_slice(), None))
            .chain(deletes.iter().map(|k| TxnOp::delete(k.as_str(), None)))
            .collect();
        let count = ops.len();
        let txn = Txn::new().when(compares).and_then(ops);
        let resp = self
            .call("atomic write", |mut c| async move { c.txn(txn).await })
            .await
            .map_err(|e| txn_limit_hint(e, count))?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map_or(0, |h| h.revision())))
    }

    pub async fn delete(&self, key: &str) -> Result<bool> {
        let key = key.to_string();
        let resp = self
            .call("delete", |mut c| async move { c.delete(key, None).await })
            .await?;
        Ok(resp.deleted() > 0)
    }

    pub async fn cas_delete(&self, key: &str, expected_mod_revision: i64) -> Result<bool> {
        if expected_mod_revision <= 0 {
            return Ok(false);
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key,
                CompareOp::Equal,
                expected_mod_revision,
            )])
            .and_then([TxnOp::delete(key, None)]);
        Ok(self.txn("compare-and-delete", txn).await?.is_some())
    }

    pub async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        // etcd counts in whole seconds: round up so a lease never lives shorter than asked.
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let secs = i64::try_from(secs.max(1)).unwrap_or(i64::MAX);
        let resp = self
            .call("lease grant", |mut c| async move {
                c.lease_grant(secs, None).await
            })
            .await?;
        if !resp.error().is_empty() {
            return Err(StoreError::Other(format!(
                "{} refused a lease: {}",
                self.at(),
                resp.error()
            )));
        }
        Ok(LeaseId(resp.id()))
    }

    pub async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        let ttl = self
            .call("lease keep-alive", |mut c| async move {
                // etcd-client sends one keep-alive and reads its answer before returning (an
                // answer with TTL 0 is its "lease not found"). That answer is not handed out,
                // so a second round on the same stream reads the refreshed TTL.
                let (mut keeper, mut stream) = c.lease_keep_alive(lease.0).await?;
                keeper.keep_alive().await?;
                match stream.message().await? {
                    Some(resp) => Ok(resp.ttl()),
                    None => Err(etcd_client::Error::LeaseKeepAliveError(
                        "keep-alive stream closed".into(),
                    )),
                }
            })
            .await?;
        if ttl <= 0 {
            return Err(StoreError::LeaseNotFound);
        }
        Ok(Duration::from_secs(ttl.unsigned_abs()))
    }

    pub async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        match self
            .call("lease revoke", |mut c| async move {
                c.lease_revoke(lease.0).await
            })
            .await
        {
            Ok(_) | Err(StoreError::LeaseNotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn compact(&self, revision: i64) -> Result<()> {
        match self
            .call("compaction", |mut c| async move {
                c.compact(revision, None).await
            })
            .await
        {
            Err(StoreError::Other(m)) if m.contains("required revision has been compacted") => {
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    pub async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream> {
        let key = prefix.to_string();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from_revision.max(0));
        // Waiting for etcd's answer to the create request makes an unreachable etcd an error
        // of this call rather than of the stream.
        let (stream, first) = self
            .call("watch", |mut c| async move {
                let mut stream = c.watch(key, Some(options)).await?;
                let first = stream.message().await?;
                Ok((stream, first))
            })
            .await?;
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(forward_watch(self.clone(), stream, first, tx));
        Ok(WatchStream::new(rx, task.abort_handle()))
    }
}

/// An etcd-client error in few words: gRPC's message and the root cause, without the layers
/// of wrapping in between.
fn error_text(e: &etcd_client::Error) -> String {
    let (head, wrapper): (String, Option<&dyn std::error::Error>) = match e {
        etcd_client::Error::GRpcStatus(s) => (s.message().to_string(), Some(s)),
        etcd_client::Error::TransportError(t) => (t.to_string(), Some(t)),
        other => (other.to_string(), None),
    };
    let mut root = None;
    let mut next = wrapper.and_then(|w| w.source());
    while let Some(cause) = next {
        root = Some(cause);
        next = cause.source();
    }
    match root.map(|r| r.to_string()) {
        Some(root) if !root.is_empty() && !head.contains(&root) => format!("{head}: {root}"),
        _ => head,
    }
}

fn put_options(lease: Option<LeaseId>) -> PutOptions {
    match lease {
        Some(l) => PutOptions::new().with_lease(l.0),
        None => PutOptions::new(),
    }
}

fn convert_kv(kv: etcd_client::KeyValue) -> KeyValue {
    let (create_revision, mod_revision, lease) =
        (kv.create_revision(), kv.mod_revision(), kv.lease());
    let (key, value) = kv.into_key_value();
    KeyValue {
        // twill only writes UTF-8 keys; a foreign binary key must not stop a listing or watch.
        key: String::from_utf8(key)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into()),
        value,
        create_revision,
        mod_revision,
        lease: (lease != 0).then_some(LeaseId(lease)),
    }
}

/// Turns one etcd watch response into what the stream yields; `None` for a response without
/// events (the create confirmation, progress notifications). The bool says the watch is over.
fn translate(store: &EtcdStore, resp: WatchResponse) -> (Option<WatchItem>, bool) {
    if resp.compact_revision() > 0 {
        let compact_revision = resp.compact_revision();
        return (Some(WatchItem::Compacted { compact_revision }), true);
    }
    if resp.canceled() {
        let why = StoreError::Unavailable(format!(
            "{} canceled the watch: {}",
            store.at(),
            resp.cancel_reason()
        ));
        return (Some(WatchItem::Broken(why)), true);
    }
    let events: Vec<Event> = resp
        .events()
        .iter()
        .filter_map(|ev| {
            let kv = ev.kv()?.clone();
            Some(match ev.event_type() {
                etcd_client::EventType::Put => Event::Put(convert_kv(kv)),
                etcd_client::EventType::Delete => {
                    let kv = convert_kv(kv);
                    Event::Delete {
                        key: kv.key,
                        mod_revision: kv.mod_revision,
                    }
                }
            })
        })
        .collect();
    if events.is_empty() {
        return (None, false);
    }
    let last = events.last().map_or(0, Event::mod_revision);
    let revision = resp.header().map_or(last, |h| h.revision().max(last));
    (Some(WatchItem::Events { events, revision }), false)
}

async fn forward_watch(
    store: EtcdStore,
    mut stream: etcd_client::WatchStream,
    first: Option<WatchResponse>,
    tx: mpsc::Sender<WatchItem>,
) {
    let mut next = Some(first);
    loop {
        let msg = match next.take() {
            Some(m) => Ok(m),
            None => tokio::select! {
                _ = tx.closed() => return,
                m = stream.message() => m,
            },
        };
        let (item, done) = match msg {
            Ok(Some(resp)) => translate(&store, resp),
            Ok(None) => {
                let why = format!("{} unreachable: the watch stream ended", store.at());
                (Some(WatchItem::Broken(StoreError::Unavailable(why))), true)
            }
            Err(e) => {
                let e = store.map_err("watch", e);
                if e.is_retryable() {
                    store.drop_client();
                }
                (Some(WatchItem::Broken(e)), true)
            }
        };
        if let Some(item) = item
            && tx.send(item).await.is_err()
        {
            return;
        }
        if done {
            return;
        }
    }
}

/// etcd's refusals of a transaction too large, with the limit that refused it (etcd checks
/// them before applying anything, so nothing was written).
fn txn_limit_hint(e: StoreError, count: usize) -> StoreError {
    match e {
        StoreError::Other(m) if m.contains("too many operations") => StoreError::Other(format!(
            "{m} ({count} changes; etcd's --max-txn-ops, 128 by default, bounds one transaction)"
        )),
        StoreError::Other(m) if m.contains("request is too large") => StoreError::Other(format!(
            "{m} ({count} changes; etcd's --max-request-bytes, 1.5 MiB by default, bounds one \
             request)"
        )),
        other => other,
    }
}
