//! What `grpcurl` does, in process: find a method's descriptors by server reflection (v1),
//! build the request from JSON with them, call the method, and print the answer as JSON in
//! the protobuf JSON mapping. Tests use it to run the README's grpcurl examples against
//! running servers, so those examples stay true.

use futures::StreamExt;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

/// Connects to `addr` (HOST:PORT) in plain text.
pub async fn connect(addr: &str) -> Result<Channel, String> {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))
}

/// Returns the descriptors that hold `service` (`pkg.Service`), asked of the server.
pub async fn descriptors(channel: &Channel, service: &str) -> Result<DescriptorPool, String> {
    let bytes = reflected_file_set(channel, service).await?;
    DescriptorPool::decode(bytes.as_slice()).map_err(|e| format!("decode descriptors: {e}"))
}

/// Asks the server, by reflection, for the file that defines `symbol` and the files it
/// imports, and returns them as an encoded `FileDescriptorSet`.
async fn reflected_file_set(channel: &Channel, symbol: &str) -> Result<Vec<u8>, String> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(symbol.to_owned())),
    };
    let mut responses = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .map_err(|s| format!("reflection: {} ({:?})", s.message(), s.code()))?
        .into_inner();
    let response = responses
        .next()
        .await
        .ok_or("reflection answered nothing")?
        .map_err(|s| format!("reflection: {} ({:?})", s.message(), s.code()))?;
    let files = match response.message_response {
        Some(MessageResponse::FileDescriptorResponse(files)) => files.file_descriptor_proto,
        Some(MessageResponse::ErrorResponse(e)) => {
            return Err(format!(
                "reflection: {} ({})",
                e.error_message, e.error_code
            ));
        }
        other => return Err(format!("reflection answered {other:?}")),
    };
    // A FileDescriptorSet is field 1 repeated: each file as a length-delimited record.
    let mut set = Vec::new();
    for file in files {
        prost::encoding::bytes::encode(1, &file, &mut set);
    }
    Ok(set)
}

/// Calls `method` (`pkg.Service/Method`) with the request in JSON, as
/// `grpcurl -d JSON ADDR METHOD` does, and returns the answer in JSON.
pub async fn call(
    channel: &Channel,
    method: &str,
    request_json: &str,
) -> Result<serde_json::Value, CallError> {
    let (service, name) = method
        .split_once('/')
        .ok_or_else(|| CallError::Usage(format!("{method:?} is not SERVICE/METHOD")))?;
    let pool = descriptors(channel, service)
        .await
        .map_err(CallError::Usage)?;
    let method = pool
        .get_service_by_name(service)
        .ok_or_else(|| CallError::Usage(format!("no service {service}")))?
        .methods()
        .find(|m| m.name() == name)
        .ok_or_else(|| CallError::Usage(format!("no method {name} in {service}")))?;
    let mut json = serde_json::Deserializer::from_str(request_json);
    let request = DynamicMessage::deserialize(method.input(), &mut json)
        .map_err(|e| CallError::Usage(format!("request {request_json}: {e}")))?;
    let answer = unary(channel, &method, request)
        .await
        .map_err(CallError::Status)?;
    serde_json::to_value(&answer).map_err(|e| CallError::Usage(format!("answer to JSON: {e}")))
}

/// Why a call failed: before it was sent, or with the server's status.
#[derive(Debug)]
pub enum CallError {
    Usage(String),
    Status(Status),
}

async fn unary(
    channel: &Channel,
    method: &MethodDescriptor,
    request: DynamicMessage,
) -> Result<DynamicMessage, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(path)
        .map_err(|e| Status::internal(e.to_string()))?;
    let codec = DynamicCodec(method.output());
    grpc.unary(tonic::Request::new(request), path, codec)
        .await
        .map(tonic::Response::into_inner)
}

/// Encodes any dynamic message; decodes answers of one message type.
struct DynamicCodec(MessageDescriptor);

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicCodec;
    type Decoder = DynamicCodec;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicCodec(self.0.clone())
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicCodec(self.0.clone())
    }
}

impl Encoder for DynamicCodec {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encode: {e}")))
    }
}

impl Decoder for DynamicCodec {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        DynamicMessage::decode(self.0.clone(), src)
            .map(Some)
            .map_err(|e| Status::internal(format!("decode: {e}")))
    }
}
