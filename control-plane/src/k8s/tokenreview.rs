//! The proxy's proof of identity on a cluster: its pod's projected
//! service-account token, for audience `palisade` only, checked with a
//! TokenReview. The API server says whose token it is (namespace, service
//! account) and which pod it is bound to; the CA then issues that identity and
//! nothing else.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;
use kube::Api;

/// Who a token belongs to, as the API server vouches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenOwner {
    pub namespace: String,
    pub service_account: String,
    /// `namespace/name` of the pod the token is bound to.
    pub pod: String,
}

#[derive(Clone)]
pub struct TokenReviewer {
    client: kube::Client,
    audience: String,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("audience", &self.audience)
            .finish()
    }
}

/// Why a token was not accepted: `Refused` is the token's fault (the caller is
/// told Unauthenticated), `Unavailable` the API server's (try again).
#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    Refused(String),
    Unavailable(String),
}

const POD_NAME: &str = "authentication.kubernetes.io/pod-name";

impl TokenReviewer {
    pub fn new(client: kube::Client, audience: impl Into<String>) -> TokenReviewer {
        TokenReviewer {
            client,
            audience: audience.into(),
        }
    }

    pub async fn review(&self, token: &str) -> Result<TokenOwner, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Refused("no token".into()));
        }
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &request)
            .await
            .map_err(|e| TokenError::Unavailable(format!("TokenReview: {e}")))?;
        owner(answer.status.unwrap_or_default(), &self.audience).map_err(TokenError::Refused)
    }
}

/// Reads the TokenReview's verdict; every check is one the API server's answer
/// must pass, or the token is refused.
fn owner(status: TokenReviewStatus, audience: &str) -> Result<TokenOwner, String> {
    if status.authenticated != Some(true) {
        let why = status.error.unwrap_or_else(|| "not authenticated".into());
        return Err(format!("the token was not accepted: {why}"));
    }
    // The API server answers with the requested audiences the token is valid
    // for; a token for another audience (the default API one) must not pass.
    if !status.audiences.iter().flatten().any(|a| a == audience) {
        return Err(format!("the token is not for audience {audience:?}"));
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let Some((namespace, service_account)) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    else {
        return Err(format!("{username:?} is not a service account"));
    };
    let pod_name = user
        .extra
        .as_ref()
        .and_then(|extra| extra.get(POD_NAME))
        .and_then(|names| names.first())
        .ok_or_else(|| "the token is not bound to a pod (use a projected token)".to_owned())?;
    Ok(TokenOwner {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        pod: format!("{namespace}/{pod_name}"),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::fake_api::{FakeApi, Reply};
    use super::*;

    const PATH: &str = "POST /apis/authentication.k8s.io/v1/tokenreviews";

    #[tokio::test]
    async fn a_pod_bound_token_for_our_audience_names_its_owner() {
        let (client, seen) = FakeApi::default()
            .route(PATH, Reply::fixture("tokenreview.authenticated.json"))
            .start();
        let owner = TokenReviewer::new(client, "palisade")
            .review("eyJhbGciOiJSUzI1NiJ9.x.y")
            .await;
        assert_eq!(
            owner,
            Ok(TokenOwner {
                namespace: "front".into(),
                service_account: "web".into(),
                pod: "front/web-7d4b9c6f58-x2x9k".into(),
            })
        );
        // It asked for our audience and sent the token.
        let (_, body) = seen.lock().unwrap()[0].clone();
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["spec"]["audiences"], serde_json::json!(["palisade"]));
        assert_eq!(body["spec"]["token"], "eyJhbGciOiJSUzI1NiJ9.x.y");
    }

    #[tokio::test]
    async fn refused_tokens_and_an_unreachable_api() {
        for (fixture, why) in [
            ("tokenreview.unauthenticated.json", "not accepted"),
            ("tokenreview.other-audience.json", "not for audience"),
            ("tokenreview.user.json", "not a service account"),
            ("tokenreview.unbound.json", "not bound to a pod"),
        ] {
            let (client, _) = FakeApi::default()
                .route(PATH, Reply::fixture(fixture))
                .start();
            match TokenReviewer::new(client, "palisade").review("t").await {
                Err(TokenError::Refused(m)) => assert!(m.contains(why), "{fixture}: {m}"),
                other => panic!("{fixture}: {other:?}"),
            }
        }
        let forbidden = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:palisade-system:palisade-control-plane\" cannot create resource \"tokenreviews\"","reason":"Forbidden","code":403}"#;
        let (client, _) = FakeApi::default()
            .route(
                PATH,
                Reply {
                    status: 403,
                    body: forbidden.into(),
                },
            )
            .start();
        let got = TokenReviewer::new(client, "palisade").review("t").await;
        assert!(
            matches!(got, Err(TokenError::Unavailable(ref m)) if m.contains("forbidden")),
            "{got:?}"
        );
        let (client, _) = FakeApi::default().start();
        assert!(matches!(
            TokenReviewer::new(client, "palisade").review("").await,
            Err(TokenError::Refused(_))
        ));
    }
}
