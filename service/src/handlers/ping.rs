//! `Ping`: echoes its text, so an operator can check the whole path
//! (gateway, stream, handler and back) with `gatemesh call Ping`.

use gatemesh_handlers::{Context, Status};
use gatemesh_proto::pb::{PingRequest, PingResponse};

pub async fn ping(_ctx: Context, request: PingRequest) -> Result<PingResponse, Status> {
    Ok(PingResponse { text: request.text })
}
