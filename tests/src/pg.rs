//! A real PostgreSQL 15 server for the tests: `initdb` into a temporary
//! directory, `postgres` on 127.0.0.1 and a free port, run as an unprivileged
//! system user (initdb refuses root), with the authentication method and TLS
//! a test asks for. Dropping the [`PgServer`] stops the postmaster this
//! harness started and removes the directory.
//!
//! The server has a database `ci` with a table
//! `users(id, name, email, password, api_key)` holding [`USERS_ROWS`], whose
//! secrets are recognisable test values.

use std::{
    fs,
    io::Write,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

/// Where Debian's PostgreSQL 15 server binaries live.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The superuser initdb creates; it connects only over the unix socket.
pub const SUPERUSER: &str = "postgres";

/// The database the tests use.
pub const DATABASE: &str = "ci";

/// Accounts that may run the server, in order of preference: Debian's
/// `postgres` (present when the server package is installed), else the one
/// `cargo xtask setup` creates.
pub const SERVER_USERS: &[&str] = &["postgres", "interceptor-pg"];

/// Rows of `ci.public.users`: (id, name, email, password, api_key).
pub const USERS_ROWS: &[(i32, &str, &str, &str, &str)] = &[
    (
        1,
        "alice",
        "alice@example.com",
        "pw-row-1",
        "AKIAABCDEFGHIJKLMNOP",
    ),
    (
        2,
        "bob",
        "bob@example.com",
        "pw-row-2",
        "AKIAQRSTUVWXYZ234567",
    ),
    (
        3,
        "carol",
        "carol@example.com",
        "pw-row-3",
        "AKIAZYXWVUTSRQPONMLK",
    ),
];

/// How clients authenticate over TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    Trust,
    Md5,
    Scram,
}

impl Auth {
    /// The pg_hba.conf method.
    pub fn hba_method(self) -> &'static str {
        match self {
            Auth::Trust => "trust",
            Auth::Md5 => "md5",
            Auth::Scram => "scram-sha-256",
        }
    }

    /// `password_encryption` while the users are created (md5 stores md5
    /// hashes so the md5 exchange really happens).
    fn password_encryption(self) -> &'static str {
        match self {
            Auth::Md5 => "md5",
            Auth::Trust | Auth::Scram => "scram-sha-256",
        }
    }
}

#[derive(Clone, Debug)]
pub struct PgOptions {
    pub auth: Auth,
    /// `ssl = on` with a certificate from a fresh CA ([`PgServer::ca_path`]),
    /// and only `hostssl` lines in pg_hba.conf: plaintext TCP is refused.
    pub tls: bool,
    /// (name, password) of the login roles to create; each may read and
    /// write `users` and create tables in `ci.public`.
    pub users: Vec<(String, String)>,
}

impl PgOptions {
    /// One user, `app` / `app-password`.
    pub fn new(auth: Auth, tls: bool) -> Self {
        PgOptions {
            auth,
            tls,
            users: vec![("app".into(), "app-password".into())],
        }
    }
}

/// The unprivileged account the server processes run as.
#[derive(Clone, Debug)]
struct ServerUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl ServerUser {
    fn find() -> Self {
        for name in SERVER_USERS {
            let Ok(out) = Command::new("getent").args(["passwd", name]).output() else {
                continue;
            };
            if !out.status.success() {
                continue;
            }
            let line = String::from_utf8_lossy(&out.stdout);
            let f: Vec<&str> = line.trim().split(':').collect();
            if let (Some(Ok(uid)), Some(Ok(gid))) =
                (f.get(2).map(|v| v.parse()), f.get(3).map(|v| v.parse()))
            {
                return ServerUser {
                    name: name.to_string(),
                    uid,
                    gid,
                };
            }
        }
        panic!(
            "no system user to run PostgreSQL as (tried {}; initdb refuses root): run `cargo xtask setup`",
            SERVER_USERS.join(", ")
        );
    }

    /// A command that runs as this user (std drops supplementary groups).
    fn command(&self, program: impl AsRef<std::ffi::OsStr>, cwd: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.uid(self.uid)
            .gid(self.gid)
            .current_dir(cwd)
            .env("HOME", cwd)
            .env("USER", &self.name)
            .env("LOGNAME", &self.name)
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST");
        cmd
    }

    fn chown(&self, path: &Path) {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .unwrap_or_else(|e| panic!("chown {} to {}: {e}", path.display(), self.name));
    }
}

/// A running PostgreSQL server started by this harness.
pub struct PgServer {
    opts: PgOptions,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    user: ServerUser,
}

impl PgServer {
    /// initdb, configure, start, wait until ready, create the users, the
    /// `ci` database and its `users` table. Panics with the server log on
    /// failure.
    pub fn start(opts: PgOptions) -> PgServer {
        Self::start_on(opts, None)
    }

    /// [`PgServer::start`] on a given port (`None`: a free one). A given
    /// port that is taken fails at once, with the server log.
    pub fn start_on(opts: PgOptions, port: Option<u16>) -> PgServer {
        assert!(
            Path::new(PG_BIN).join("postgres").exists(),
            "{PG_BIN}/postgres is missing: the PostgreSQL 15 server binaries (Debian package postgresql-15) are needed"
        );
        let user = ServerUser::find();
        let dir = tempfile::Builder::new()
            .prefix("interceptor-pg-")
            .tempdir()
            .expect("tempdir");
        user.chown(dir.path());
        let mut server = PgServer {
            opts,
            dir,
            port: 0,
            child: None,
            user,
        };
        server.initdb();
        if server.opts.tls {
            server.make_certs();
        }
        server.configure();
        server.launch(port);
        server.populate();
        server
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// "127.0.0.1:PORT"
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host(), self.port)
    }

    pub fn options(&self) -> &PgOptions {
        &self.opts
    }

    /// The directory of the unix socket (superuser access, trust).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate that signed the server's certificate (tls only).
    pub fn ca_path(&self) -> PathBuf {
        assert!(
            self.opts.tls,
            "ca_path: this server was started without tls"
        );
        self.tls_dir().join("ca.crt")
    }

    /// The password of one of [`PgOptions::users`].
    pub fn password(&self, user: &str) -> &str {
        self.opts
            .users
            .iter()
            .find(|(n, _)| n == user)
            .map(|(_, p)| p.as_str())
            .unwrap_or_else(|| panic!("{user} is not one of this server's users"))
    }

    /// A libpq URI for database `ci` on 127.0.0.1. With a `verify-*`
    /// sslmode on a tls server, `sslrootcert` points at [`Self::ca_path`].
    pub fn dsn(&self, user: &str, password: &str, sslmode: &str) -> String {
        let mut dsn = format!(
            "postgresql://{}:{}@{}:{}/{DATABASE}?sslmode={sslmode}&connect_timeout=10",
            pct(user),
            pct(password),
            self.host(),
            self.port
        );
        if self.opts.tls && sslmode.starts_with("verify") {
            dsn.push_str("&sslrootcert=");
            dsn.push_str(&pct(&self.ca_path().to_string_lossy()));
        }
        dsn
    }

    /// `program` (psql, pgbench, ...) with PGHOST/PGPORT/PGUSER/PGPASSWORD/
    /// PGDATABASE set for `user` (one of [`PgOptions::users`]) on 127.0.0.1,
    /// and PGSSLMODE `require` on a tls server (with PGSSLROOTCERT set, so a
    /// caller may switch to `verify-full`), else `disable`.
    pub fn client(&self, program: &str, user: &str) -> Command {
        let password = self.password(user).to_string();
        let mut cmd = Command::new(program);
        cmd.env("PGHOST", self.host())
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", user)
            .env("PGPASSWORD", password)
            .env("PGDATABASE", DATABASE)
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGSERVICE")
            .env_remove("PGPASSFILE")
            .env_remove("PGSSLCERT")
            .env_remove("PGSSLKEY")
            .env_remove("PGOPTIONS")
            .env(
                "PGSSLMODE",
                if self.opts.tls { "require" } else { "disable" },
            );
        if self.opts.tls {
            cmd.env("PGSSLROOTCERT", self.ca_path());
        } else {
            cmd.env_remove("PGSSLROOTCERT");
        }
        cmd
    }

    /// `psql -X -v ON_ERROR_STOP=1 <args>` as `user`, see [`Self::client`].
    pub fn psql(&self, user: &str, args: &[&str]) -> Command {
        let mut cmd = self.client("psql", user);
        cmd.args(["-X", "-v", "ON_ERROR_STOP=1"]).args(args);
        cmd
    }

    /// Runs `sql` with `psql -XAt` as `user` over TCP; returns stdout,
    /// panics with psql's stderr and the server log on failure.
    pub fn query(&self, user: &str, sql: &str) -> String {
        let out = self
            .psql(user, &["-A", "-t", "-c", sql])
            .output()
            .expect("run psql");
        self.expect_ok(&out, &format!("psql as {user}: {sql}"))
    }

    /// `psql -X -q` as the superuser over the unix socket (not
    /// intercepted), in database `db`, with no libpq environment of the
    /// caller's; add the arguments.
    pub fn superuser_psql(&self, db: &str) -> Command {
        let mut cmd = Command::new("psql");
        cmd.env_remove("PGSSLMODE")
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .args(["-X", "-q", "-h"])
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string(), "-U", SUPERUSER, "-d", db]);
        cmd
    }

    /// Runs `sql` (one or more statements, each in its own transaction) as
    /// the superuser over the unix socket, in database `db`.
    pub fn admin_sql(&self, db: &str, sql: &str) -> String {
        let out = self
            .superuser_psql(db)
            .args(["-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                // Statements from stdin each run in their own transaction
                // (CREATE DATABASE cannot run in one).
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(sql.as_bytes())?;
                child.wait_with_output()
            })
            .expect("run psql");
        self.expect_ok(&out, &format!("superuser psql on {db}: {sql}"))
    }

    /// Panics with the command's output and the server log tail unless it succeeded.
    pub fn expect_ok(&self, out: &Output, what: &str) -> String {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{what} failed ({}):\nstdout: {stdout}\nstderr: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(40)
        );
        stdout
    }

    /// The whole server log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last `n` lines of the server log, with a header, for panic messages.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(n);
        format!(
            "--- postgres log {} (last {} lines) ---\n{}",
            self.log_path().display(),
            lines.len() - start,
            lines[start..].join("\n")
        )
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    fn initdb(&self) {
        let out = self
            .user
            .command(Path::new(PG_BIN).join("initdb"), self.dir.path())
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=reject"])
            .output()
            .expect("run initdb");
        if !out.status.success() {
            panic!(
                "initdb as {} failed ({}):\n{}\n{}",
                self.user.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    fn make_certs(&self) {
        assert!(
            Command::new("openssl")
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "the openssl CLI is missing: run `cargo xtask setup`"
        );
        let tls = self.tls_dir();
        fs::create_dir(&tls).expect("create tls dir");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .current_dir(&tls)
                .args(args)
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        openssl(
            &[
                &["req", "-x509", "-nodes"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.crt",
                    "-days",
                    "7",
                    "-subj",
                    "/CN=interceptor test CA",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req", "-nodes"][..],
                &ec,
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=localhost",
                ],
            ]
            .concat(),
        );
        fs::write(
            tls.join("server.ext"),
            "basicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\n\
             subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .expect("write server.ext");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "7",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ]);
        let key = tls.join("server.key");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod server.key");
        self.user.chown(&tls);
        for f in ["server.key", "server.crt", "ca.crt"] {
            self.user.chown(&tls.join(f));
        }
        // Clients running as root read ca.crt through the 0700 tempdir; other
        // users would need it copied out.
        fs::set_permissions(tls.join("ca.crt"), fs::Permissions::from_mode(0o644))
            .expect("chmod ca.crt");
    }

    fn configure(&self) {
        let data = self.data_dir();
        let mut conf = format!(
            "\n# interceptor test harness\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             shared_buffers = 16MB\n\
             max_connections = 300\n\
             password_encryption = '{}'\n\
             log_connections = on\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n",
            self.dir.path().display(),
            self.opts.auth.password_encryption()
        );
        if self.opts.tls {
            let tls = self.tls_dir();
            conf.push_str(&format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                tls.join("server.crt").display(),
                tls.join("server.key").display()
            ));
        } else {
            conf.push_str("ssl = off\n");
        }
        let path = data.join("postgresql.conf");
        let mut text = fs::read_to_string(&path).expect("read postgresql.conf");
        text.push_str(&conf);
        fs::write(&path, text).expect("write postgresql.conf");

        let host = if self.opts.tls { "hostssl" } else { "host" };
        let hba = format!(
            "# interceptor test harness\n\
             local all all trust\n\
             {host} all all 127.0.0.1/32 {}\n",
            self.opts.auth.hba_method()
        );
        fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
    }

    /// Starts the postmaster on a free port (retrying if another process
    /// took the port in between) and waits for `pg_isready`.
    fn launch(&mut self, port: Option<u16>) {
        let attempts = if port.is_some() { 1 } else { 5 };
        for attempt in 1..=attempts {
            self.port = port.unwrap_or_else(free_port);
            let log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.log_path())
                .expect("server log");
            let child = self
                .user
                .command(Path::new(PG_BIN).join("postgres"), self.dir.path())
                .arg("-D")
                .arg(self.data_dir())
                .args(["-p", &self.port.to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log"))
                .stderr(log)
                .spawn()
                .expect("spawn postgres");
            self.child = Some(child);
            match self.wait_ready() {
                Ok(()) => return,
                Err(status) => {
                    self.child = None;
                    let log = self.log();
                    if attempt < attempts && log.contains("Address already in use") {
                        continue;
                    }
                    panic!(
                        "postgres exited during start ({status}) as {}:\n{}",
                        self.user.name,
                        self.log_tail(60)
                    );
                }
            }
        }
    }

    /// Ok once pg_isready answers; Err(status) if the postmaster exited.
    fn wait_ready(&mut self) -> Result<(), std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(status);
                }
            }
            let ready = Command::new("pg_isready")
                .args(["-q", "-t", "2", "-d", DATABASE, "-h", self.host()])
                .args(["-p", &self.port.to_string()])
                .env_remove("PGSSLMODE")
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                panic!(
                    "postgres on {} not ready after 30s:\n{}",
                    self.addr(),
                    self.log_tail(60)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn populate(&self) {
        let mut sql = String::new();
        for (name, password) in &self.opts.users {
            sql.push_str(&format!(
                "CREATE ROLE {} LOGIN PASSWORD {};\n",
                ident(name),
                literal(password)
            ));
        }
        sql.push_str(&format!("CREATE DATABASE {DATABASE};\n"));
        self.admin_sql("postgres", &sql);

        let mut sql = String::from(
            "CREATE TABLE users (id int, name text, email text, password text, api_key text);\n",
        );
        for (id, name, email, password, api_key) in USERS_ROWS {
            sql.push_str(&format!(
                "INSERT INTO users VALUES ({id}, {}, {}, {}, {});\n",
                literal(name),
                literal(email),
                literal(password),
                literal(api_key)
            ));
        }
        for (name, _) in &self.opts.users {
            sql.push_str(&format!(
                "GRANT ALL ON SCHEMA public TO {0};\nGRANT ALL ON TABLE users TO {0};\n",
                ident(name)
            ));
        }
        self.admin_sql(DATABASE, &sql);
    }

    /// Immediate shutdown (SIGQUIT) of the postmaster this harness started.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::stop_child(&mut child, libc::SIGQUIT, Duration::from_secs(10));
        }
    }
}

impl PgServer {
    /// What it takes to stop this server later by pid (see [`crate::Kept`]).
    pub fn record(&self) -> crate::Kept {
        let exe = Path::new(PG_BIN).join("postgres");
        crate::Kept::of(
            "postgres",
            self.child.as_ref(),
            exe,
            libc::SIGINT,
            self.dir.path(),
        )
    }

    /// Leaves the server running after this handle is gone (the demo's
    /// `--keep`), with its directory: stop it with [`crate::Kept::stop`].
    pub fn keep(mut self) -> crate::Kept {
        let kept = self.record();
        crate::Kept::release(&mut self.child, &mut self.dir);
        kept
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        // The TempDir removes the directory (we are root).
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A SQL identifier, quoted.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A SQL string literal (standard_conforming_strings is on).
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn pct(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
