//! Merge, precedence, print-config and validation of the whole configuration.

use std::io::Write as _;

use super::*;

fn cmd(args: &[&str]) -> Result<CommandLine, clap::Error> {
    CommandLine::try_parse_from(
        std::iter::once("derper")
            .chain(args.iter().copied())
            .map(String::from),
    )
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn settings_with_file(text: &str, flags: &[&str]) -> Result<Settings, ConfigError> {
    let f = config_file(text);
    let path = f.path().to_str().unwrap().to_string();
    let mut args = vec!["--config-file", &path];
    args.extend_from_slice(flags);
    cmd(&args).unwrap().settings()
}

#[test]
fn accepts_go_spelling() {
    let c = cmd(&[
        "-hostname=127.0.0.1",
        "-certmode",
        "manual",
        "-a",
        ":8443",
        "-c",
        "/tmp/k",
        "-stun=false",
        "-http-port=-1",
        "-keepalive=30s",
    ])
    .unwrap();
    assert_eq!(c.cli().hostname, "127.0.0.1");
    assert_eq!(c.cli().certmode.as_deref(), Some("manual"));
    assert_eq!(c.cli().addr, ":8443");
    assert!(!c.cli().stun);
    assert_eq!(c.cli().http_port, -1);
    let cfg = c.into_config().unwrap();
    assert!(cfg.tls.is_some());
    assert!(cfg.stun_addrs.is_empty());
    assert!(cfg.http_addr.is_none());
    assert_eq!(cfg.relay.keepalive, Duration::from_secs(30));
}

#[test]
fn flag_defaults_are_the_settings_defaults() {
    let c = cmd(&["-c", "/tmp/k"]).unwrap();
    let cli = c.cli();
    let mut expected = Settings::default();
    expected.server.key_file = Some("/tmp/k".into());
    expected.tls.certdir = Some(default_cert_dir());
    assert_eq!(c.settings().unwrap(), expected);
    // What clap would have produced without the merge agrees with the defaults too.
    let d = Settings::default();
    assert_eq!(cli.addr, d.listen.addr);
    assert_eq!(cli.http_port, d.listen.http_port);
    assert_eq!(cli.stun_port, d.listen.stun_port);
    assert_eq!(cli.certmode, d.tls.certmode);
    assert_eq!(cli.hostname, d.tls.hostname);
    assert_eq!(cli.queue_depth, d.relay.queue_depth);
    assert_eq!(Some(cli.tcp_write_timeout.0), d.relay.write_timeout);
    assert_eq!(cli.keepalive.0, d.relay.keepalive);
    assert_eq!(cli.handshake_timeout.0, d.relay.handshake_timeout);
    assert_eq!(cli.mesh_write_timeout.0, d.relay.mesh_write_timeout);
    assert_eq!(cli.tcp_keepalive_time.0, d.listen.tcp_keepalive_time);
    assert_eq!(cli.tcp_user_timeout.0, d.listen.tcp_user_timeout);
}

#[test]
fn dev_defaults_to_loopback_plain_http_and_stun() {
    let cfg = cmd(&["--dev"]).unwrap().into_config().unwrap();
    assert_eq!(cfg.addr, "127.0.0.1:3340".parse().unwrap());
    assert!(cfg.tls.is_none());
    assert_eq!(cfg.stun_addrs, vec!["127.0.0.1:3478".parse().unwrap()]);
    assert!(matches!(cfg.key, KeySource::Ephemeral));
}

#[test]
fn mesh_with_needs_a_key_and_well_formed_peers() {
    let err = cmd(&["-dev", "-mesh-with=a,b"])
        .unwrap()
        .into_config()
        .unwrap_err();
    assert!(err.to_string().contains("require --mesh-psk-file"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let psk = dir.path().join("psk");
    std::fs::write(&psk, "ab".repeat(32)).unwrap();
    let psk_flag = format!("--mesh-psk-file={}", psk.display());
    let err = cmd(&["-dev", &psk_flag, "-mesh-with=a/b/c"])
        .unwrap()
        .into_config()
        .unwrap_err();
    assert!(err.to_string().contains("too many components"), "{err}");
    let cfg = cmd(&[
        "-dev",
        &psk_flag,
        "-mesh-with=derp2.example.com,derp3.example.com/10.0.0.3,http://10.0.0.4:3340/derp",
        "--mesh-allow-plain",
        "--mesh-ca=/etc/ssl/region-ca.pem",
    ])
    .unwrap()
    .into_config()
    .unwrap();
    assert_eq!(cfg.mesh.peers.len(), 3);
    assert!(cfg.mesh.allow_plain);
    assert_eq!(
        cfg.mesh.ca_file.as_deref(),
        Some(std::path::Path::new("/etc/ssl/region-ca.pem"))
    );
    assert!(cfg.mesh_key.is_some());
}

#[test]
fn quic_port_needs_tls_and_a_mesh_key() {
    let dir = tempfile::tempdir().unwrap();
    let psk = dir.path().join("psk");
    std::fs::write(&psk, "ab".repeat(32)).unwrap();
    let psk_flag = format!("--mesh-psk-file={}", psk.display());
    let err = cmd(&["-dev", "--quic-port=8443"])
        .unwrap()
        .into_config()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`listen.quic_port`") && err.contains("--mesh-psk-file"),
        "{err}"
    );
    let err = cmd(&["-dev", &psk_flag, "--quic-port=8443"])
        .unwrap()
        .into_config()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`listen.quic_port`") && err.contains("TLS"),
        "{err}"
    );
    let cfg = cmd(&[
        "-a=127.0.0.1:8443",
        "-c=/tmp/k",
        "--certmode=manual",
        "--hostname=127.0.0.1",
        &psk_flag,
        "--quic-port=8443",
        "--mesh-with=quic://10.0.0.2:8443,auto://derp3.example.com",
    ])
    .unwrap()
    .into_config()
    .unwrap();
    assert_eq!(cfg.quic_addr, Some("127.0.0.1:8443".parse().unwrap()));
    // The file spelling, and the auto-mode timings.
    let s = settings_with_file(
        "[listen]\nquic_port = 443\n[mesh]\nquic_fallback_after = \"2s\"\nquic_retry_interval = \"0s\"\n",
        &[&psk_flag],
    )
    .unwrap_err()
    .to_string();
    assert!(s.contains("`mesh.quic_retry_interval`"), "{s}");
    let err = settings_with_file("[listen]\nquic_port = 0\n", &[&psk_flag])
        .unwrap_err()
        .to_string();
    assert!(err.contains("`listen.quic_port`"), "{err}");
}

#[test]
fn unbuilt_features_are_refused() {
    let err = cmd(&["-dev", "-secrets-url=https://setec"])
        .unwrap()
        .into_config()
        .unwrap_err();
    assert!(err.to_string().contains("--secrets-url"));
    assert!(cmd(&["--no-such-flag"]).is_err());
}

#[test]
fn admission_and_limit_flags_reach_the_settings() {
    let s = cmd(&[
        "-dev",
        "-verify-client-url=http://headscale:8080/verify",
        "-verify-client-url-fail-open=true",
        "--verify-client-timeout=2s",
        "--verify-client-reverify=0",
        "--accept-connection-limit=50",
        "--rate-config=/etc/derper/rate.json",
        "--drain-grace=1m",
        "--bootstrap-dns-names=a.example, b.example",
        "--log-format=json",
    ])
    .unwrap()
    .settings()
    .unwrap();
    assert_eq!(
        s.admission.verify_client_url.as_deref(),
        Some("http://headscale:8080/verify")
    );
    assert!(s.admission.fail_open);
    assert_eq!(s.admission.timeout, Duration::from_secs(2));
    assert_eq!(s.admission.reverify_interval, None);
    assert_eq!(s.limits.accept_limit(), Some((50.0, 50)));
    assert_eq!(
        s.limits.rate_config.as_deref(),
        Some(std::path::Path::new("/etc/derper/rate.json"))
    );
    assert_eq!(s.server.drain_grace, Duration::from_secs(60));
    assert_eq!(s.server.bootstrap_dns_names, ["a.example", "b.example"]);
    assert_eq!(s.server.log_format, "json");
    // Fail-closed is the default here (derper's is open; see the README).
    assert!(
        !cmd(&["-dev", "-verify-client-url=http://h/verify"])
            .unwrap()
            .settings()
            .unwrap()
            .admission
            .fail_open
    );
    for (flags, key) in [
        (
            &["-dev", "--verify-client-url-fail-open"][..],
            "admission.fail_open",
        ),
        (
            &["-dev", "--socket=/run/ts.sock"][..],
            "admission.tailscaled_socket",
        ),
        (
            &["-dev", "--accept-connection-burst=5"][..],
            "limits.accept_connection_burst",
        ),
        (&["-dev", "--log-format=xml"][..], "server.log_format"),
    ] {
        let err = cmd(flags).unwrap().settings().unwrap_err();
        assert!(
            matches!(err, ConfigError::Invalid { key: k, .. } if k == key),
            "{flags:?}: {err}"
        );
    }
}

#[test]
fn plain_port_serves_plain_http() {
    let cfg = cmd(&["-a", "127.0.0.1:8080", "-c", "/tmp/k"])
        .unwrap()
        .into_config()
        .unwrap();
    assert!(cfg.tls.is_none());
    assert_eq!(cfg.stun_addrs, vec!["127.0.0.1:3478".parse().unwrap()]);
    assert_eq!(cfg.relay, RelaySettings::default());
}

#[test]
fn file_overrides_defaults_and_flags_override_file() {
    let file = r#"
        [server]
        key_file = "/file/key"
        home = "blank"
        derp = false
        [listen]
        addr = "127.0.0.1:1000"
        http_port = 1001
        stun = false
        stun_port = 1002
        metrics_addr = "127.0.0.1:1003"
        max_connections = 1004
        tcp_keepalive_time = "1m"
        tcp_user_timeout = "1s"
        [tls]
        certmode = "manual"
        certdir = "/file/certs"
        hostname = "file.example"
        [relay]
        queue_depth = 1
        control_queue_depth = 2
        write_timeout = "1s"
        mesh_write_timeout = "1s"
        handshake_timeout = "1s"
        keepalive = "1s"
        [mesh]
        psk_file = "/file/psk"
    "#;
    let s = settings_with_file(file, &[]).unwrap();
    assert_eq!(s.server.key_file, Some("/file/key".into()));
    assert_eq!(s.listen.addr, "127.0.0.1:1000");
    assert_eq!(s.relay.queue_depth, 1);
    assert_eq!(s.relay.control_queue_depth, 2);
    // Untouched by file and flags: the default.
    assert_eq!(
        s.relay.max_conns_per_key,
        RelaySettings::default().max_conns_per_key
    );

    let s = settings_with_file(
        file,
        &[
            "-c=/flag/key",
            "--home=",
            "--derp=true",
            "-a=127.0.0.1:2000",
            "--http-port=2001",
            "--stun=true",
            "--stun-port=2002",
            "--metrics-addr=127.0.0.1:2003",
            "--max-connections=2004",
            "--tcp-keepalive-time=2m",
            "--tcp-user-timeout=2s",
            "--certmode=letsencrypt",
            "--certdir=/flag/certs",
            "--hostname=flag.example",
            "--queue-depth=3",
            "--tcp-write-timeout=0",
            "--mesh-write-timeout=2s",
            "--handshake-timeout=2s",
            "--keepalive=2s",
            "--mesh-psk-file=/flag/psk",
        ],
    )
    .unwrap();
    assert_eq!(s.server.key_file, Some("/flag/key".into()));
    assert_eq!(s.server.home, "");
    assert!(s.server.derp);
    assert_eq!(s.listen.addr, "127.0.0.1:2000");
    assert_eq!(s.listen.http_port, 2001);
    assert!(s.listen.stun);
    assert_eq!(s.listen.stun_port, 2002);
    assert_eq!(
        s.listen.metrics_addr,
        Some("127.0.0.1:2003".parse().unwrap())
    );
    assert_eq!(s.listen.max_connections, Some(2004));
    assert_eq!(s.listen.tcp_keepalive_time, Duration::from_secs(120));
    assert_eq!(s.listen.tcp_user_timeout, Duration::from_secs(2));
    assert_eq!(s.tls.certmode.as_deref(), Some("letsencrypt"));
    assert_eq!(s.tls.certdir, Some("/flag/certs".into()));
    assert_eq!(s.tls.hostname, "flag.example");
    assert_eq!(s.relay.queue_depth, 3);
    assert_eq!(s.relay.write_timeout, None);
    assert_eq!(s.relay.mesh_write_timeout, Duration::from_secs(2));
    assert_eq!(s.relay.handshake_timeout, Duration::from_secs(2));
    assert_eq!(s.relay.keepalive, Duration::from_secs(2));
    assert_eq!(s.mesh.psk_file, Some("/flag/psk".into()));
    // A flag left at its default does not undo the file.
    assert_eq!(s.relay.control_queue_depth, 2);
}

#[test]
fn print_config_parses_back_to_the_same_settings() {
    for flags in [
        &[
            "-c",
            "/k",
            "--mesh-psk-file",
            "/psk",
            "--tcp-write-timeout=0",
        ][..],
        &["--dev"][..],
        &[
            "-c",
            "/k",
            "--certmode=manual",
            "--hostname=10.0.0.1",
            "--stun-addr=127.0.0.1:3478",
            "--stun-addr=[::1]:3478",
            "--metrics-addr=127.0.0.1:9464",
            "--keepalive=1m30s",
            "--handshake-timeout=2.5s",
        ][..],
        &[
            "--dev",
            "--verify-client-url=https://hs.example/verify",
            "--verify-client-reverify=0",
            "--accept-connection-limit=2.5",
            "--rate-config=/r.json",
            "--drain-grace=5s",
        ][..],
    ] {
        let c = cmd(flags).unwrap();
        let printed = c.render_config().unwrap();
        let mut again = vec!["--config-file".to_string()];
        let f = config_file(&printed);
        again.push(f.path().to_str().unwrap().into());
        if c.cli().dev {
            again.push("--dev".into());
        }
        let reparsed = cmd(&again.iter().map(String::as_str).collect::<Vec<_>>())
            .unwrap()
            .settings()
            .unwrap_or_else(|e| panic!("{e}\n{printed}"));
        assert_eq!(reparsed, c.settings().unwrap(), "{printed}");
    }
}

#[test]
fn print_config_shows_the_psk_path_not_the_key() {
    let psk = config_file(&"ab".repeat(32));
    let c = cmd(&["--dev", "--mesh-psk-file", psk.path().to_str().unwrap()]).unwrap();
    let printed = c.render_config().unwrap();
    assert!(printed.contains(psk.path().to_str().unwrap()), "{printed}");
    assert!(!printed.contains("abab"), "{printed}");
}

#[test]
fn admission_and_limits_sections_are_read() {
    let s = settings_with_file(
        "[admission]\nverify_client_url = \"https://a.example/verify\"\nnegative_ttl = \"5s\"\n[limits]\naccept_connection_limit = 10.5\naccept_connection_burst = 20\nrate_config = \"/r.json\"\n",
        &["--dev"],
    )
    .unwrap();
    assert_eq!(s.admission.negative_ttl, Duration::from_secs(5));
    assert_eq!(s.limits.accept_limit(), Some((10.5, 20)));
    // Present but empty sections (as --print-config writes them): accepted.
    settings_with_file(
        "[mesh]\npeers = []\nallow_plain = false\n[admission]\n[limits]\n",
        &["--dev"],
    )
    .unwrap();
    // Mesh peers in a file need the key file like --mesh-with does.
    let err = settings_with_file("[mesh]\npeers = [\"a.example\"]", &["--dev"]).unwrap_err();
    assert!(err.to_string().contains("require --mesh-psk-file"), "{err}");
}

#[test]
fn bad_values_name_the_key() {
    for (file, key) in [
        ("[mesh]\npeers = [\"a b\"]", "mesh.peers"),
        ("[mesh]\npeers = [\"a/b/c\"]", "mesh.peers"),
        (
            "[admission]\nverify_client_url = \"ftp://x\"",
            "admission.verify_client_url",
        ),
        ("[admission]\ntimeout = \"0s\"", "admission.timeout"),
        (
            "[limits]\naccept_connection_limit = -1.0",
            "limits.accept_connection_limit",
        ),
        (
            "[limits]\naccept_connection_limit = nan",
            "limits.accept_connection_limit",
        ),
        (
            "[limits]\naccept_connection_burst = 0",
            "limits.accept_connection_burst",
        ),
        (
            "[server]\nbootstrap_dns_names = [\"a b\"]",
            "server.bootstrap_dns_names",
        ),
    ] {
        let err = settings_with_file(file, &["--dev"]).unwrap_err();
        assert!(
            matches!(err, ConfigError::Invalid { key: k, .. } if k == key),
            "{file}: {err}"
        );
    }
}

#[test]
fn contradictions_name_the_key() {
    for (file, flags, key) in [
        ("[relay]\nqueue_depth = 0", &[][..], "relay.queue_depth"),
        ("", &["--queue-depth=0"][..], "relay.queue_depth"),
        (
            "[relay]\nhandshake_timeout = \"0s\"",
            &[][..],
            "relay.handshake_timeout",
        ),
        ("", &["--keepalive=0"][..], "relay.keepalive"),
        (
            "[relay]\nmesh_write_timeout = \"0\"",
            &[][..],
            "relay.mesh_write_timeout",
        ),
        (
            "[relay]\nmax_conns_per_key = 0",
            &[][..],
            "relay.max_conns_per_key",
        ),
        ("[tls]\nhostname = \"x\"", &["--dev"][..], "tls"),
        ("[tls]\ncertmode = \"gcp\"", &[][..], "tls.certmode"),
        ("[listen]\naddr = \"443\"", &[][..], "listen.addr"),
        ("[server]\nhome = \"nowhere\"", &[][..], "server.home"),
        (
            "[listen]\nstun_addrs = [\"127.0.0.1:3478\"]",
            &["--stun=false"][..],
            "listen.stun_addrs",
        ),
    ] {
        let mut flags = flags.to_vec();
        flags.extend(["-c", "/tmp/k"]);
        let err = settings_with_file(file, &flags).unwrap_err();
        assert!(
            matches!(err, ConfigError::Invalid { key: k, .. } if k == key),
            "{file} {flags:?}: {err}"
        );
        assert!(err.to_string().contains(&format!("`{key}`")), "{err}");
    }
}

#[test]
fn file_errors_name_the_file_and_key() {
    let err = settings_with_file("[relay]\nkeepalive = 60\n", &[]).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("`relay.keepalive`"), "{text}");
    assert!(text.starts_with("config file /"), "{text}");
    let err = cmd(&["--config-file", "/nonexistent/derper.toml"])
        .unwrap()
        .settings()
        .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/derper.toml"),
        "{err}"
    );
}

#[test]
fn explicit_letsencrypt_serves_tls_on_any_port() {
    // The implicit default keeps Go's rule: plain HTTP off :443 (plain_port_serves_plain_http).
    let cfg = cmd(&[
        "-a",
        "127.0.0.1:8443",
        "-c",
        "/tmp/k",
        "--certmode",
        "letsencrypt",
        "--hostname",
        "a.example, b.example",
        "--acme-email",
        "ops@example.com",
        "--acme-challenge",
        "http-01",
    ])
    .unwrap()
    .into_config()
    .unwrap();
    let tls = cfg.tls.expect("TLS");
    assert_eq!(tls.cert_mode, CertMode::LetsEncrypt);
    assert_eq!(tls.hostname, "a.example");
    let acme = cfg.acme.expect("ACME");
    assert_eq!(acme.hostnames, ["a.example", "b.example"]);
    assert_eq!(acme.directory, defaults::ACME_DIRECTORY);
    assert_eq!(acme.email.as_deref(), Some("ops@example.com"));
    assert_eq!(acme.challenge, ChallengePreference::Http01);
    assert_eq!(cfg.http_addr, Some("127.0.0.1:80".parse().unwrap()));
    // On :443 the default mode is ACME too, as in Go.
    let cfg = cmd(&["-a", ":443", "-c", "/tmp/k", "--hostname", "a.example"])
        .unwrap()
        .into_config()
        .unwrap();
    assert!(cfg.acme.is_some());
}

#[test]
fn acme_settings_are_checked() {
    for (flags, key) in [
        (
            &["--certmode=letsencrypt", "--hostname=10.0.0.1"][..],
            "tls.hostname",
        ),
        (
            &["--certmode=manual", "--hostname=a.example,b.example"][..],
            "tls.hostname",
        ),
        (
            &["--acme-directory=http://ca.example/dir"][..],
            "tls.acme_directory",
        ),
        (&["--acme-challenge=dns-01"][..], "tls.acme_challenge"),
        (&["--acme-eab-kid=kid"][..], "tls.acme_eab_key"),
        (
            &["--acme-eab-kid=kid", "--acme-eab-key=!!"][..],
            "tls.acme_eab_key",
        ),
    ] {
        let mut args = flags.to_vec();
        args.extend(["-c", "/tmp/k"]);
        let err = cmd(&args).unwrap().settings().unwrap_err();
        assert!(
            matches!(err, ConfigError::Invalid { key: k, .. } if k == key),
            "{flags:?}: {err}"
        );
    }
    // HTTP-01 is answered on --http-port, so it cannot be disabled.
    let err = cmd(&[
        "-c",
        "/tmp/k",
        "-a",
        ":8443",
        "--certmode=letsencrypt",
        "--acme-challenge=http-01",
        "--http-port=-1",
    ])
    .unwrap()
    .into_config()
    .unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::Invalid {
                key: "tls.acme_challenge",
                ..
            }
        ),
        "{err}"
    );
    let err =
        settings_with_file("[tls]\nacme_retry_min = \"0s\"\n", &["-c", "/tmp/k"]).unwrap_err();
    assert!(err.to_string().contains("tls.acme_retry_min"), "{err}");
}

#[test]
fn print_config_never_shows_the_eab_key() {
    let c = cmd(&[
        "-c",
        "/tmp/k",
        "--acme-eab-kid",
        "kid-1",
        "--acme-eab-key",
        "c2VjcmV0LWhtYWMta2V5",
    ])
    .unwrap();
    let text = c.render_config().unwrap();
    assert!(text.contains("kid-1"), "{text}");
    assert!(!text.contains("c2VjcmV0"), "{text}");
    assert!(!format!("{:?}", c.settings().unwrap()).contains("c2VjcmV0"));
    let cfg = cmd(&[
        "-c",
        "/tmp/k",
        "--certmode=letsencrypt",
        "--acme-eab-kid",
        "kid-1",
        "--acme-eab-key",
        "c2VjcmV0LWhtYWMta2V5",
    ])
    .unwrap()
    .into_config()
    .unwrap();
    let eab = cfg.acme.unwrap().eab.unwrap();
    assert_eq!(eab.hmac_key, b"secret-hmac-key");
    assert!(!format!("{eab:?}").contains("secret"));
}
