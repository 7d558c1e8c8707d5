//! The CA key lives in a Secret, so every replica signs with the same root and
//! any replica serves any proxy. The first replica to start makes it; if two
//! start at once, the API server lets one create win (409 for the other),
//! and the loser reads the winner's.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::PostParams;
use kube::Api;
use palisade_certs::{CaConfig, CertificateAuthority};

const CERT_KEY: &str = "ca.crt";
const KEY_KEY: &str = "ca.key";

/// Loads the CA from Secret `namespace/name`, or makes one and stores it there.
pub async fn load_or_create(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    config: CaConfig,
) -> anyhow::Result<CertificateAuthority> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let origin = format!("Secret {namespace}/{name}");
    if let Some(secret) = api
        .get_opt(name)
        .await
        .with_context(|| format!("reading {origin}"))?
    {
        return from_secret(&secret, config, &origin);
    }
    let ca = CertificateAuthority::generate(config.clone())?;
    let secret = to_secret(&ca, namespace, name);
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            eprintln!("made a new CA root and stored it in {origin}");
            Ok(ca)
        }
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            // Another replica made it first: use theirs.
            let secret = api
                .get(name)
                .await
                .with_context(|| format!("reading {origin}"))?;
            from_secret(&secret, config, &origin)
        }
        Err(e) => Err(e).with_context(|| format!("creating {origin}")),
    }
}

/// The Secret that holds `ca`.
pub(crate) fn to_secret(ca: &CertificateAuthority, namespace: &str, name: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_owned(),
                "palisade".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (
                CERT_KEY.to_owned(),
                ByteString(ca.root_pem().as_bytes().to_vec()),
            ),
            (KEY_KEY.to_owned(), ByteString(ca.key_pem().into_bytes())),
        ])),
        ..Secret::default()
    }
}

fn from_secret(
    secret: &Secret,
    config: CaConfig,
    origin: &str,
) -> anyhow::Result<CertificateAuthority> {
    let field = |key: &str| -> anyhow::Result<String> {
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .with_context(|| format!("{origin}: data.{key} is missing"))?;
        String::from_utf8(bytes.0.clone())
            .with_context(|| format!("{origin}: data.{key} is not PEM text"))
    };
    Ok(CertificateAuthority::from_pem(
        config,
        &field(CERT_KEY)?,
        &field(KEY_KEY)?,
        Path::new(origin),
    )?)
}

/// Puts `ca_pem` into the caBundle of every webhook of the configuration
/// `name`, so the API server trusts the webhook's serving certificate (as
/// istiod does for its injector). Retried on a write conflict.
pub async fn publish_ca_bundle(
    client: &kube::Client,
    name: &str,
    ca_pem: &str,
) -> anyhow::Result<()> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    for _ in 0..5 {
        let mut config = api
            .get(name)
            .await
            .with_context(|| format!("reading MutatingWebhookConfiguration {name}"))?;
        let bundle = ByteString(ca_pem.as_bytes().to_vec());
        let webhooks = config.webhooks.iter_mut().flatten();
        let mut changed = false;
        for webhook in webhooks {
            if webhook.client_config.ca_bundle.as_ref() != Some(&bundle) {
                webhook.client_config.ca_bundle = Some(bundle.clone());
                changed = true;
            }
        }
        if !changed {
            return Ok(());
        }
        match api.replace(name, &PostParams::default(), &config).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.is_conflict() => continue,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("updating MutatingWebhookConfiguration {name}"))
            }
        }
    }
    anyhow::bail!("MutatingWebhookConfiguration {name}: kept changing under us")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use serde_json::{json, Value};

    use super::super::fake_api::{FakeApi, Reply};
    use super::*;

    const SECRET: &str = "/api/v1/namespaces/palisade-system/secrets";

    async fn load(client: &kube::Client) -> anyhow::Result<CertificateAuthority> {
        load_or_create(
            client,
            "palisade-system",
            "palisade-ca",
            CaConfig::default(),
        )
        .await
    }

    fn secret_json(ca: &CertificateAuthority) -> String {
        let mut secret = to_secret(ca, "palisade-system", "palisade-ca");
        secret.metadata.resource_version = Some("5121".into());
        let mut v = serde_json::to_value(secret).unwrap();
        v["apiVersion"] = json!("v1");
        v["kind"] = json!("Secret");
        v.to_string()
    }

    fn not_found() -> Reply {
        Reply {
            status: 404,
            body: r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"secrets \"palisade-ca\" not found","reason":"NotFound","details":{"name":"palisade-ca","kind":"secrets"},"code":404}"#.into(),
        }
    }

    #[tokio::test]
    async fn replicas_share_the_root_in_the_secret() {
        let existing = CertificateAuthority::generate(CaConfig::default()).unwrap();
        let (client, _) = FakeApi::default()
            .route(
                &format!("GET {SECRET}/palisade-ca"),
                Reply::ok(secret_json(&existing)),
            )
            .start();
        let ca = load(&client).await.unwrap();
        assert_eq!(ca.root(), existing.root());
    }

    #[tokio::test]
    async fn the_first_replica_makes_it_and_a_racing_one_takes_the_winners() {
        // No Secret yet: made and stored.
        let (client, seen) = FakeApi::default()
            .route(&format!("GET {SECRET}/palisade-ca"), not_found())
            .route(&format!("POST {SECRET}"), Reply::ok("{}"))
            .start();
        let ca = load(&client).await.unwrap();
        let posted = seen
            .lock()
            .unwrap()
            .iter()
            .find(|(r, _)| r.starts_with("POST"))
            .cloned()
            .unwrap();
        let posted: Value = serde_json::from_str(&posted.1).unwrap();
        let stored: Secret = serde_json::from_value(posted).unwrap();
        assert_eq!(stored.data.unwrap()[CERT_KEY].0, ca.root_pem().as_bytes());

        // Another replica created it between our GET and our POST: 409, read theirs.
        let winner = CertificateAuthority::generate(CaConfig::default()).unwrap();
        let conflict = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"secrets \"palisade-ca\" already exists","reason":"AlreadyExists","details":{"name":"palisade-ca","kind":"secrets"},"code":409}"#;
        let (client, _) = FakeApi::default()
            .route(&format!("GET {SECRET}/palisade-ca"), not_found())
            .route(
                &format!("GET {SECRET}/palisade-ca"),
                Reply::ok(secret_json(&winner)),
            )
            .route(
                &format!("POST {SECRET}"),
                Reply {
                    status: 409,
                    body: conflict.into(),
                },
            )
            .start();
        let ca = load(&client).await.unwrap();
        assert_eq!(ca.root(), winner.root());
    }

    #[tokio::test]
    async fn a_secret_without_the_key_is_an_error_naming_it() {
        let mut secret: Value = serde_json::from_str(&secret_json(
            &CertificateAuthority::generate(CaConfig::default()).unwrap(),
        ))
        .unwrap();
        secret["data"].as_object_mut().unwrap().remove(KEY_KEY);
        let (client, _) = FakeApi::default()
            .route(
                &format!("GET {SECRET}/palisade-ca"),
                Reply::ok(secret.to_string()),
            )
            .start();
        let e = load(&client).await.unwrap_err();
        assert!(
            format!("{e:#}").contains("Secret palisade-system/palisade-ca: data.ca.key is missing"),
            "{e:#}"
        );
    }
}
