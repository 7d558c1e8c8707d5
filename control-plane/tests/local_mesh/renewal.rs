//! Short-lived certificates on the real mesh: with a 60 s lifetime every proxy
//! renews over the distribution stream every ~30 s, and a client that opens a new
//! mTLS connection through two proxies five times a second for three minutes never
//! sees one fail.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

const CLIENT: &str = r#"
import json, socket, sys, time
end = time.time() + float(sys.argv[3])
ok, failed, errors = 0, 0, []
while time.time() < end:
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
        s.settimeout(3)
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        reply = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
        s.close()
        if reply.startswith(b"HTTP/1.0 200"):
            ok += 1
        else:
            failed += 1
            errors.append("%.1f: %r" % (time.time(), reply[:40]))
    except OSError as e:
        failed += 1
        errors.append("%.1f: %s" % (time.time(), e))
    time.sleep(0.2)
print(json.dumps({"ok": ok, "failed": failed, "errors": errors[:10]}))
"#;

#[test]
fn sixty_second_certificates_renew_with_no_failed_connection_in_three_minutes() {
    let mesh = up_example(&["--cert-lifetime-secs", "60"]);
    mesh.wait_all_acked(0, 4, Duration::from_secs(10));
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &mesh.netns("front/nginx-front"),
            "python3",
            "-c",
            CLIENT,
        ])
        .args(["10.77.0.20", "80", "180"])
        .output()
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("client output: {out:?}"));
    eprintln!("3 minutes of new connections with 60 s certificates: {report}");
    assert_eq!(report["failed"], 0, "{report}\n{}", mesh.serve_log());
    assert!(report["ok"].as_u64().unwrap() > 500, "{report}");

    // Every proxy renewed (first certificate + one per ~30 s), and the ones in use
    // now are not the first ones.
    let status = mesh.serve_status();
    for (pod, proxy) in status["proxies"].as_object().unwrap() {
        let issued = proxy["certificates_issued"].as_u64().unwrap();
        eprintln!("{pod}: {issued} certificates issued");
        assert!(
            issued >= 5,
            "{pod}: only {issued} certificates in 3 minutes: {proxy}"
        );
        assert_eq!(proxy["connected"], true, "{pod}");
    }
    assert_eq!(status["proxies"].as_object().unwrap().len(), 4);
}
