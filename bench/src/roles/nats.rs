//! A NATS responder: a plain subscriber (no queue group), so every
//! responder gets every request and the first reply wins, like
//! `first_valid`. A responder that does not hold the lease stays silent,
//! which is how "not mine" looks in NATS request-reply.

use futures_util::StreamExt;
use gatemesh_proto::pb::{FindVpsByLeaseRequest, FindVpsByLeaseResponse};
use gatemesh_service::inventory::Inventory;
use prost::Message;

use crate::args::Args;
use crate::payload;

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let url = args.required("url")?;
    let owner = args.flag("owner");
    let inventory = payload::inventory(owner);
    let client = async_nats::connect(url).await?;
    let mut requests = client.subscribe(payload::NATS_SUBJECT).await?;
    // The subscription is on the server before anyone is told we are ready.
    client.flush().await?;
    super::ready(0);
    let serve = async {
        while let Some(message) = requests.next().await {
            let Some(reply_to) = message.reply else {
                continue;
            };
            let Ok(request) = FindVpsByLeaseRequest::decode(message.payload) else {
                continue;
            };
            if let Ok(Some(vps)) = inventory.find_by_lease(&request.ip, &request.mac).await {
                let answer = FindVpsByLeaseResponse {
                    vps_id: vps.vps_id,
                    organization_id: vps.organization_id,
                };
                let _ = client
                    .publish(reply_to, answer.encode_to_vec().into())
                    .await;
            }
        }
    };
    tokio::select! {
        _ = serve => {}
        _ = super::until_stdin_closes() => {}
    }
    Ok(())
}
