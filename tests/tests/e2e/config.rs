//! `weft server`'s configuration against the real binary: a config file with an unknown key,
//! one that does not parse, a bad `--peers` and an address in use each stop the node with
//! exit code 2 and a message naming the culprit; a node configured by a file (listen address,
//! data dir, node id) serves, and a variable overrides the file. The merge rules themselves
//! are unit-tested in `src/config.rs`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use weft_e2e::{free_port, wait_for};

/// A `weft server` with only the given environment (none of the caller's `WEFT_` variables),
/// its stderr in a file. Killed when dropped.
struct Server {
    child: Child,
    stderr: PathBuf,
}

impl Server {
    fn spawn(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let stderr = dir.join("stderr.log");
        let child = Command::new(weft_e2e::weft_bin())
            .arg("server")
            .args(args)
            .env_clear()
            .envs(env.iter().copied())
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("create the stderr file"))
            .spawn()
            .expect("spawn weft server");
        Server { child, stderr }
    }

    /// Waits (bounded) for the process to exit by itself: its exit code and stderr.
    async fn exit(mut self) -> (i32, String) {
        let stderr = self.stderr.clone();
        let child = &mut self.child;
        let status = wait_for("weft server to exit", Duration::from_secs(30), || {
            let polled = child.try_wait().expect("poll the process");
            async move { polled }
        })
        .await;
        (status.code().expect("exited, not killed"), std::fs::read_to_string(stderr).unwrap_or_default())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `weft server` that must refuse to start: its stderr, after checking exit code 2.
async fn refused(dir: &Path, args: &[&str]) -> String {
    let (code, stderr) = Server::spawn(dir, args, &[]).exit().await;
    assert_eq!(code, 2, "exit code; stderr {stderr:?}");
    stderr
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("node.toml");
    std::fs::write(&path, text).expect("write node.toml");
    path.display().to_string()
}

fn assert_mentions(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "{text:?} does not mention {part:?}");
    }
}

#[tokio::test]
async fn a_config_file_with_an_unknown_key_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(dir.path(), "node_id = 1\nlisten_addr = \"127.0.0.1:7470\"\n");
    let stderr = refused(dir.path(), &["--config", &path]).await;
    assert_mentions(&stderr, &[&format!("config file {path}, line 2"), "unknown field `listen_addr`"]);
    assert!(!dir.path().join(".weft").exists(), "a data dir was created: {stderr}");
}

#[tokio::test]
async fn a_config_file_that_does_not_parse_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(dir.path(), "node_id = 1\nshards = 16\ndata_dir = \"/tmp\nlisten = \"127.0.0.1:7470\"\n");
    let stderr = refused(dir.path(), &["--config", &path]).await;
    assert_mentions(&stderr, &[&format!("config file {path}, line 3"), "data_dir"]);
    // Through WEFT_CONFIG, and with a bad value rather than bad syntax.
    let path = write_config(dir.path(), "node_id = 0\n");
    let (code, stderr) = Server::spawn(dir.path(), &[], &[("WEFT_CONFIG", &path)]).exit().await;
    assert_eq!(code, 2, "{stderr}");
    assert_mentions(&stderr, &[&format!("config file {path}, line 1"), "key `node_id`"]);
}

#[tokio::test]
async fn a_bad_peers_list_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stderr = refused(dir.path(), &["--peers", "1=127.0.0.1:7471,2=127.0.0.1"]).await;
    assert_mentions(&stderr, &["peer entry `2=127.0.0.1`", "not HOST:PORT"]);
    let stderr =
        refused(dir.path(), &["--peers", "1=127.0.0.1:7471,2=127.0.0.1:7472", "--advertise-addr", "127.0.0.1:9"]).await;
    assert_mentions(&stderr, &["peer entry `1=127.0.0.1:7471`", "127.0.0.1:9"]);
    assert!(!dir.path().join(".weft").exists(), "a data dir was created: {stderr}");
}

#[tokio::test]
async fn an_address_in_use_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = taken.local_addr().expect("addr").to_string();
    let data_dir = dir.path().join("data");
    let data = data_dir.display().to_string();

    let stderr = refused(dir.path(), &["--data-dir", &data, "--listen", &taken, "--metrics-listen", "off"]).await;
    assert_mentions(&stderr, &[&format!("cannot listen on {taken} (--listen)"), "already in use"]);
    // Refused before the data dir is created: no stray one-node cluster is left behind.
    assert!(!data_dir.exists(), "the data dir was created: {stderr}");

    let listen = format!("127.0.0.1:{}", free_port());
    let stderr = refused(dir.path(), &["--data-dir", &data, "--listen", &listen, "--metrics-listen", &taken]).await;
    assert_mentions(&stderr, &[&format!("cannot listen on {taken} (--metrics-listen)"), "already in use"]);
}

#[tokio::test]
async fn a_node_configured_by_a_file_serves() {
    let dir = tempfile::tempdir().expect("temp dir");
    let listen = format!("127.0.0.1:{}", free_port());
    let data_dir = dir.path().join("node-data");
    let path = write_config(
        dir.path(),
        &format!(
            "node_id = 3\nlisten = \"{listen}\"\ndata_dir = '{}'\nmetrics_listen = \"off\"\nshards = 5\n\
             wal_prewrite_mib = 1\n",
            data_dir.display()
        ),
    );
    // The variable beats the file's `shards = 5`.
    let _server = Server::spawn(dir.path(), &["--config", &path], &[("WEFT_SHARDS", "3")]);
    let status: Value = wait_for("weft cluster status to answer", Duration::from_secs(60), || {
        let listen = listen.clone();
        async move {
            let output = tokio::task::spawn_blocking(move || {
                Command::new(weft_e2e::weft_bin())
                    .args(["--server", &listen, "--output", "json", "cluster", "status"])
                    .env_clear()
                    .output()
            })
            .await
            .expect("join")
            .expect("run weft cluster status");
            if !output.status.success() {
                return None;
            }
            serde_json::from_slice(&output.stdout).ok()
        }
    })
    .await;
    assert_eq!(status["this_node_id"], 3, "{status}");
    assert_eq!(status["shard_count"], 3, "{status}");
    assert!(data_dir.join("db").is_dir(), "the node's storage is not in the file's data_dir");
}

#[test]
fn a_data_dir_refuses_another_node_id() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("node");
    let port = free_port();
    let run = |node_id: &str| {
        weft_e2e::weft_command()
            .args(["server", "--data-dir"])
            .arg(&data)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--node-id", node_id, "--wal-prewrite-mib", "1"])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn weft")
    };
    // First start creates the data dir as node 1; wait until it answers `cluster status` (not
    // merely until the port accepts: another process may hold a port handed out twice), then kill it.
    let mut first = run("1");
    let server = format!("127.0.0.1:{port}");
    let ready = (0..600).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        assert!(first.try_wait().expect("poll node 1").is_none(), "node 1 exited early");
        let status = weft_e2e::weft_command()
            .args(["--server", &server, "--output", "json", "cluster", "status"])
            .output()
            .expect("run weft cluster status");
        status.status.success() && serde_json::from_slice::<Value>(&status.stdout).is_ok_and(|v| v["nodes"].is_array())
    });
    assert!(ready, "node 1 serves");
    first.kill().expect("kill");
    first.wait().expect("reap");
    let mut second = run("2");
    // Bounded: a node that wrongly accepts the data dir would serve forever.
    let exited = (0..600).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        second.try_wait().expect("poll node 2").is_some()
    });
    if !exited {
        let _ = second.kill();
    }
    let second = second.wait_with_output().expect("node 2's output");
    assert!(exited, "node 2 exits within 30 s instead of serving node 1's data dir");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "node 2 must refuse node 1's data dir: {stderr}");
    assert!(stderr.contains("node 1") && stderr.contains("--node-id 2"), "the message says which: {stderr}");
}
