//! A real PostgreSQL for the tests, never a mock.
//!
//! With `QUBS_BRIDGE_TEST_DATABASE_URL` set (a server where the tests may create and drop
//! databases), every test gets a database of its own there. Otherwise the first test that
//! needs one starts a throwaway cluster: `initdb` in a temporary directory, `postgres` on a
//! free loopback port with TLS (a test CA) and password authentication, run as the
//! `postgres` user when the tests run as root (initdb refuses root). The server is a child
//! of a thread that lives as long as the test process and gets SIGINT when the process
//! ends, however it ends; an exit handler also stops it and removes its directory.
//!
//! Without server binaries, `tests/postgres/install.sh` installs Debian's `postgresql`
//! package (once, under a lock). When that cannot work either, the test fails saying how
//! to get a server: a PostgreSQL test never skips.
//!
//! Durability: the throwaway cluster runs with `fsync = off` (the tests kill replicas and
//! restart the server, never the machine; the commit record still reaches the operating
//! system before a commit returns). Benchmarks start theirs with `fsync = on`.

#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use qubs_bridge::store::StoreSettings;
use secrecy::SecretString;

/// Where tests create their databases.
pub enum Server {
    /// `QUBS_BRIDGE_TEST_DATABASE_URL`: a superuser (or CREATEDB) URL, password included.
    External {
        admin_url: String,
    },
    Local(Cluster),
}

/// A cluster this process started.
pub struct Cluster {
    pub port: u16,
    pub dir: PathBuf,
    pub password: String,
    /// The CA that signed the server's certificate (for `sslmode=verify-full`).
    pub ca_file: PathBuf,
    bin: PathBuf,
    pid: Mutex<Option<u32>>,
    fsync: bool,
}

/// The server shared by the tests of this process.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| match std::env::var("QUBS_BRIDGE_TEST_DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => Server::External {
            admin_url: url.trim().to_string(),
        },
        _ => Server::Local(Cluster::start(false)),
    })
}

/// A database of one test's own; dropped (best effort) when the value is.
pub struct TestDb {
    pub name: String,
    /// Without the password.
    pub url: String,
    pub password: Option<String>,
    pub ca_file: Option<PathBuf>,
    admin_url: String,
}

static DATABASES: AtomicU32 = AtomicU32::new(0);

impl Server {
    /// A fresh, empty database.
    pub async fn database(&self) -> TestDb {
        let admin_url = match self {
            Server::External { admin_url } => admin_url.clone(),
            Server::Local(c) => return c.database().await,
        };
        let name = create_database(&admin_url).await;
        let (base, query) = admin_url.split_once('?').unwrap_or((&admin_url, ""));
        let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
        let url = if query.is_empty() {
            format!("{base}/{name}")
        } else {
            format!("{base}/{name}?{query}")
        };
        TestDb {
            name,
            url,
            password: None,
            ca_file: None,
            admin_url,
        }
    }
}

/// Creates a database with a name of its own; returns the name.
async fn create_database(admin_url: &str) -> String {
    let name = format!(
        "qb_test_{}_{}",
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::Relaxed)
    );
    let (client, conn) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL ({e})"));
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
    name
}

impl TestDb {
    /// Store settings for this database (lease `lease_secs`).
    pub fn settings(&self, lease_secs: u64) -> StoreSettings {
        StoreSettings {
            url: Some(self.url.clone()),
            password: self.password.clone().map(SecretString::from),
            lease_secs,
            ..Default::default()
        }
    }

    /// The same as environment overrides, for replica processes.
    pub fn env(&self, lease_secs: u64) -> Vec<(String, String)> {
        let mut env = vec![
            ("QUBS_BRIDGE__STORE__URL".to_string(), self.url.clone()),
            (
                "QUBS_BRIDGE__STORE__LEASE_SECS".to_string(),
                lease_secs.to_string(),
            ),
        ];
        if let Some(p) = &self.password {
            env.push(("QUBS_BRIDGE__STORE__PASSWORD".to_string(), p.clone()));
        }
        env
    }

    /// Creates the schema, as `qubs-bridge store migrate` does.
    pub async fn migrate(&self) {
        let db = qubs_bridge::store::Database::open_for_tools(
            &self.settings(30),
            &qubs_bridge::service::SCHEMA,
        )
        .await
        .expect("the test database opens");
        db.migrate(&qubs_bridge::service::SCHEMA)
            .await
            .expect("the schema migrates");
    }

    /// A plain connection as the admin user, for looking at tables.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (base, query) = self
            .admin_url
            .split_once('?')
            .unwrap_or((&self.admin_url, ""));
        let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
        let url = format!(
            "{base}/{}{}",
            self.name,
            if query.is_empty() {
                String::new()
            } else {
                format!("?{query}")
            }
        );
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connects to the test database");
        tokio::spawn(conn);
        client
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        // A runtime of its own: the test's may be gone or busy.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                    .await
                    .ok()?;
                tokio::spawn(conn);
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// Finds the server binaries, installing Debian's package when there are none.
fn bin_dir() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/postgres/install.sh");
        let out =
            super::install::run_locked(Command::new("bash").arg(&script).stderr(Stdio::inherit()));
        assert!(
            out.status.success(),
            "no PostgreSQL server for the tests: {} could not find or install one (see above). \
             Install Debian's postgresql package (apt-get install postgresql), or set \
             QUBS_BRIDGE_TEST_PG_BINDIR to a bin directory with initdb and postgres, or \
             QUBS_BRIDGE_TEST_DATABASE_URL to a server where the tests may create databases",
            script.display()
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

/// The `postgres` user's ids when the tests run as root (initdb refuses root).
fn unprivileged() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: getpwnam takes a NUL-terminated name and returns a pointer into static storage
    // (or null); the fields are read at once, before any other call could overwrite it.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "the tests run as root and there is no `postgres` user to run the test cluster as \
         (initdb refuses root); Debian's postgresql package creates it"
    );
    // SAFETY: pw is not null (checked above) and points to a valid passwd record.
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What the keeper thread does for the clusters.
enum Keep {
    Spawn(Box<Command>, mpsc::Sender<std::io::Result<u32>>),
    Stop(u32, i32, mpsc::Sender<()>),
}

/// Runs server processes from one thread that never ends, so that the parent-death signal
/// (set in each child) fires only when the whole test process goes.
fn keeper() -> &'static Mutex<mpsc::Sender<Keep>> {
    static KEEPER: OnceLock<Mutex<mpsc::Sender<Keep>>> = OnceLock::new();
    KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Keep>();
        std::thread::Builder::new()
            .name("postgres-keeper".into())
            .spawn(move || {
                let mut children: Vec<Child> = Vec::new();
                for job in rx {
                    match job {
                        Keep::Spawn(mut cmd, reply) => {
                            let spawned = cmd.spawn().map(|child| {
                                let pid = child.id();
                                children.push(child);
                                pid
                            });
                            let _ = reply.send(spawned);
                        }
                        Keep::Stop(pid, signal, reply) => {
                            if let Some(i) = children.iter().position(|c| c.id() == pid) {
                                let mut child = children.remove(i);
                                // SAFETY: kill on a child's pid we have not waited for yet.
                                unsafe { libc::kill(pid as i32, signal) };
                                let until = Instant::now() + Duration::from_secs(30);
                                while Instant::now() < until {
                                    if let Ok(Some(_)) = child.try_wait() {
                                        break;
                                    }
                                    std::thread::sleep(Duration::from_millis(20));
                                }
                                let _ = child.kill();
                                let _ = child.wait();
                            }
                            let _ = reply.send(());
                        }
                    }
                }
                // The sender is in a static: never reached, so this thread never ends.
                loop {
                    std::thread::park();
                }
            })
            .expect("keeper thread");
        Mutex::new(tx)
    })
}

/// Clusters to stop at exit.
static CLUSTERS: Mutex<Vec<(u32, PathBuf)>> = Mutex::new(Vec::new());

extern "C" fn stop_clusters_at_exit() {
    let clusters = std::mem::take(&mut *CLUSTERS.lock().unwrap_or_else(|e| e.into_inner()));
    for (pid, dir) in clusters {
        // SAFETY: a plain signal to the server process; fast shutdown.
        unsafe { libc::kill(pid as i32, libc::SIGINT) };
        let until = Instant::now() + Duration::from_secs(10);
        // SAFETY: kill with signal 0 only checks that the process exists.
        while Instant::now() < until && unsafe { libc::kill(pid as i32, 0) } == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

impl Cluster {
    /// Starts a cluster of its own (`fsync` as asked). Stopped at process exit.
    pub fn start(fsync: bool) -> Cluster {
        let bin = bin_dir();
        let owner = unprivileged();
        let dir = std::env::temp_dir().join(format!(
            "qubs-bridge-pg-{}-{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let password = uuid::Uuid::new_v4().simple().to_string();
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n")).unwrap();
        // TLS: a test CA and a certificate for 127.0.0.1 and localhost.
        let (ca_pem, cert_pem, key_pem) = test_certificates();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca_pem).unwrap();
        std::fs::write(dir.join("server.crt"), cert_pem).unwrap();
        std::fs::write(dir.join("server.key"), key_pem).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        if let Some((uid, gid)) = owner {
            for entry in [
                dir.clone(),
                pwfile.clone(),
                dir.join("server.crt"),
                dir.join("server.key"),
                ca_file.clone(),
            ] {
                std::os::unix::fs::chown(&entry, Some(uid), Some(gid)).unwrap();
            }
        }
        let data = dir.join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                "--locale=C",
                "--encoding=UTF8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .current_dir(&dir)
            .stdout(Stdio::null());
        if let Some((uid, gid)) = owner {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb.output().expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Cluster {
            port: free_port(),
            dir,
            password,
            ca_file,
            bin,
            pid: Mutex::new(None),
            fsync,
        };
        cluster.start_server();
        static AT_EXIT: OnceLock<()> = OnceLock::new();
        AT_EXIT.get_or_init(|| {
            // SAFETY: registers a plain extern "C" function with no arguments.
            unsafe { libc::atexit(stop_clusters_at_exit) };
        });
        cluster
    }

    fn admin_url(&self) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/postgres?sslmode=disable",
            self.password, self.port
        )
    }

    fn start_server(&self) {
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "unix_socket_directories="])
            .args(["-c", "max_connections=400"])
            .args(["-c", "ssl=on"])
            .arg("-c")
            .arg(format!(
                "ssl_cert_file={}",
                self.dir.join("server.crt").display()
            ))
            .arg("-c")
            .arg(format!(
                "ssl_key_file={}",
                self.dir.join("server.key").display()
            ))
            .args(["-c", if self.fsync { "fsync=on" } else { "fsync=off" }])
            .args(["-c", "log_min_messages=fatal"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.dir.join("server.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            );
        if let Some((uid, gid)) = unprivileged() {
            cmd.uid(uid).gid(gid);
        }
        // SAFETY: prctl is async-signal-safe; after the uid change (which would clear it),
        // it asks for SIGINT (a fast shutdown) when the keeper thread, and so the test
        // process, is gone.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT);
                Ok(())
            });
        }
        let (tx, rx) = mpsc::channel();
        keeper()
            .lock()
            .unwrap()
            .send(Keep::Spawn(Box::new(cmd), tx))
            .unwrap();
        let pid = rx.recv().unwrap().expect("postgres starts");
        *self.pid.lock().unwrap() = Some(pid);
        CLUSTERS.lock().unwrap().push((pid, self.dir.clone()));
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < until,
                "the test PostgreSQL did not start; its log:\n{}",
                std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server: `immediate` is a crash (SIGQUIT), otherwise a fast shutdown.
    pub fn stop(&self, immediate: bool) {
        let Some(pid) = self.pid.lock().unwrap().take() else {
            return;
        };
        CLUSTERS.lock().unwrap().retain(|(p, _)| *p != pid);
        let (tx, rx) = mpsc::channel();
        let signal = if immediate {
            libc::SIGQUIT
        } else {
            libc::SIGINT
        };
        keeper()
            .lock()
            .unwrap()
            .send(Keep::Stop(pid, signal, tx))
            .unwrap();
        let _ = rx.recv();
    }

    /// Starts the server again on the same port and data.
    pub fn restart(&self) {
        self.start_server();
    }

    /// A fresh database on this cluster.
    pub async fn database(&self) -> TestDb {
        let admin_url = self.admin_url();
        let name = create_database(&admin_url).await;
        TestDb {
            url: format!(
                "postgres://postgres@127.0.0.1:{}/{name}?sslmode=disable",
                self.port
            ),
            name,
            password: Some(self.password.clone()),
            ca_file: Some(self.ca_file.clone()),
            admin_url,
        }
    }
}

/// A CA, and a server certificate it signed for 127.0.0.1 and localhost: (CA, cert, key).
fn test_certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "qubs-bridge test database CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let mut server =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, "qubs-bridge test database");
    let key = KeyPair::generate().unwrap();
    let cert = server.signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}
