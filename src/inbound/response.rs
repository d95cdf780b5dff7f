//! Rendering a flow's `[response]` into the HTTP answer.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use minijinja::Value;

use crate::error::{ApiError, Body};
use crate::flow::{ResponseSpec, StatusSource};
use crate::template::{Templates, describe_at};

/// Renders `spec` against `ctx`. `default_body` is used when the spec has no body.
pub async fn render(
    spec: &ResponseSpec,
    env: &Templates,
    ctx: &Value,
    default_body: impl FnOnce() -> String,
) -> Result<Response<Body>, ApiError> {
    let status = match &spec.status {
        StatusSource::Fixed(status) => *status,
        StatusSource::Template(name) => {
            let text = render_named(env, name, ctx).await?;
            let text = text.trim();
            text.parse::<u16>()
                .ok()
                .filter(|code| (100..=599).contains(code))
                .and_then(|code| StatusCode::from_u16(code).ok())
                .ok_or_else(|| {
                    invalid(format!(
                        "the response status template rendered `{text}`, which is not an HTTP status (100..=599)"
                    ))
                })?
        }
    };
    let body = match &spec.body {
        Some(name) => render_named(env, name, ctx).await?,
        None => default_body(),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(spec.default_content_type),
    );
    for (name, template) in &spec.headers {
        let value = render_named(env, template, ctx).await?;
        let value = HeaderValue::from_str(value.trim()).map_err(|_| {
            invalid(format!(
                "the response header `{name}` rendered a value that is not a valid header value"
            ))
        })?;
        response.headers_mut().insert(name.clone(), value);
    }
    Ok(response)
}

async fn render_named(env: &Templates, name: &str, ctx: &Value) -> Result<String, ApiError> {
    env.render_text(name, ctx).await.map_err(|e| {
        invalid(format!(
            "the flow's response failed to render: {}",
            describe_at(&e)
        ))
    })
}

fn invalid(message: String) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "response_invalid",
        message,
    )
}
