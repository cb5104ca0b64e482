//! `igpo data index` and `igpo serve retrieval` as a user runs them: the
//! binary, a real loopback socket, SIGTERM at the end.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn igpo() -> Command {
    Command::new(env!("CARGO_BIN_EXE_igpo"))
}

fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `igpo data index CORPUS --out OUT`.
fn data_index(corpus: &std::path::Path, out: &std::path::Path) -> std::process::Output {
    igpo()
        .args(["data", "index"])
        .arg(corpus)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

/// One HTTP/1.1 request on a fresh connection; (status, body).
fn request(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

#[test]
fn data_index_then_serve_retrieval_answers_search_r1_requests_and_stops_on_sigterm() {
    let dir = scratch("retrieval-cli");
    let corpus = dir.join("corpus.jsonl");
    std::fs::write(
        &corpus,
        concat!(
            "{\"id\":\"a\",\"title\":\"Alpha\",\"text\":\"alpha particles are helium nuclei\"}\n",
            "{\"id\":\"b\",\"title\":\"Beta\",\"text\":\"beta decay emits an electron\"}\n",
            "\n",
            "{\"title\":\"Gamma\",\"text\":\"gamma rays are photons; alpha is not\"}\n",
        ),
    )
    .unwrap();
    let index = dir.join("index");
    let out = data_index(&corpus, &index);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("indexed 3 passages"), "{stdout}");
    // Again without --force: one error line, the index untouched.
    let out = data_index(&corpus, &index);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    // A bad line: the line number, and no index folder left behind.
    std::fs::write(
        dir.join("bad.jsonl"),
        "{\"text\":\"ok\"}\n{\"title\":\"x\"}\n",
    )
    .unwrap();
    let out = data_index(&dir.join("bad.jsonl"), &dir.join("bad-index"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains("text"),
        "{stderr}"
    );
    assert!(!dir.join("bad-index").exists());
    assert!(std::fs::read_dir(&dir).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains("building")));

    let mut server = igpo()
        .args([
            "-v",
            "serve",
            "retrieval",
            "--addr",
            "127.0.0.1:0",
            "--index",
        ])
        .arg(&index)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(server.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    assert!(
        first.starts_with("serving 3 documents on http://"),
        "{first}"
    );
    let addr = first
        .trim()
        .trim_start_matches("serving 3 documents on http://")
        .trim_end_matches("/retrieve")
        .to_string();

    let (status, body) = request(
        &addr,
        "POST",
        "/retrieve",
        r#"{"queries": ["alpha", "electron decay", "zzz"], "topk": 2, "return_scores": true}"#,
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let result = v["result"].as_array().unwrap();
    assert_eq!(result.len(), 3);
    let ids = |i: usize| -> Vec<String> {
        result[i]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["document"]["id"].as_str().unwrap().to_string())
            .collect()
    };
    // "alpha" is in a (title + text) and in the third passage (id: its number).
    assert_eq!(ids(0), ["a", "2"]);
    assert_eq!(ids(1), ["b"]);
    assert!(ids(2).is_empty());
    assert_eq!(
        result[1][0]["document"]["contents"],
        "\"Beta\"\nbeta decay emits an electron"
    );
    assert!(result[0][0]["score"].as_f64().unwrap() > result[0][1]["score"].as_f64().unwrap());
    let (status, body) = request(&addr, "POST", "/retrieve", "{\"queries\": ");
    assert_eq!(status, 400, "{body}");
    assert!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"].is_string());

    let kill = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = server.wait().unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "{status:?}: {rest}");
    assert!(rest.contains("POST /retrieve 200"), "{rest}");
    assert!(rest.contains("POST /retrieve 400"), "{rest}");
    assert!(rest.contains("terminated"), "{rest}");
}
