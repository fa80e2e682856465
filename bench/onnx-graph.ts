/**
 * A minimal ONNX ModelProto writer: the protobuf wire format of the few messages a small graph of
 * standard operators needs (onnx/onnx.proto field numbers), so the anchor comparison can build its
 * onnxruntime graphs at bench time without a Python toolchain. Attributes are integers only.
 */

export type ElemType = 'float' | 'int64';

export interface ValueInfo {
  name: string;
  type: ElemType;
  /** A number is a fixed size, a string a symbolic one. */
  shape: readonly (number | string)[];
}

export interface Initializer {
  name: string;
  dims: readonly number[];
  data: Float32Array | BigInt64Array;
}

export interface GraphNode {
  op: string;
  inputs: readonly string[];
  outputs: readonly string[];
  attributes?: Readonly<Record<string, number | readonly number[]>>;
}

export interface Graph {
  name: string;
  nodes: readonly GraphNode[];
  initializers?: readonly Initializer[];
  inputs: readonly ValueInfo[];
  outputs: readonly ValueInfo[];
}

/** TensorProto.DataType */
const DATA_TYPE: Record<ElemType, number> = { float: 1, int64: 7 };
/** AttributeProto.AttributeType */
const ATTRIBUTE_INT = 2;
const ATTRIBUTE_INTS = 7;
/** IR version 8 goes with opsets up to 18. */
const IR_VERSION = 8;

const VARINT = 0;
const LENGTH_DELIMITED = 2;
const utf8 = new TextEncoder();

function varint(value: number | bigint): Uint8Array {
  let v = BigInt.asUintN(64, BigInt(value)); // int64 two's complement, as protobuf writes negatives
  const bytes: number[] = [];
  while (v >= 0x80n) {
    bytes.push(Number(v & 0x7fn) | 0x80);
    v >>= 7n;
  }
  bytes.push(Number(v));
  return Uint8Array.from(bytes);
}

/** Builds one message; fields are appended in the order written. */
class Message {
  private readonly chunks: Uint8Array[] = [];

  int(field: number, value: number | bigint): this {
    this.chunks.push(varint((field << 3) | VARINT), varint(value));
    return this;
  }

  bytes(field: number, data: Uint8Array): this {
    this.chunks.push(varint((field << 3) | LENGTH_DELIMITED), varint(data.length), data);
    return this;
  }

  string(field: number, text: string): this {
    return this.bytes(field, utf8.encode(text));
  }

  message(field: number, message: Message): this {
    return this.bytes(field, message.finish());
  }

  finish(): Uint8Array {
    const out = new Uint8Array(this.chunks.reduce((n, chunk) => n + chunk.length, 0));
    let offset = 0;
    for (const chunk of this.chunks) {
      out.set(chunk, offset);
      offset += chunk.length;
    }
    return out;
  }
}

function valueInfo(value: ValueInfo): Message {
  const shape = new Message();
  for (const dim of value.shape) {
    shape.message(1, typeof dim === 'number' ? new Message().int(1, dim) : new Message().string(2, dim));
  }
  const tensorType = new Message().int(1, DATA_TYPE[value.type]).message(2, shape);
  return new Message().string(1, value.name).message(2, new Message().message(1, tensorType));
}

function initializer(tensor: Initializer): Message {
  const message = new Message();
  for (const dim of tensor.dims) message.int(1, dim);
  const type: ElemType = tensor.data instanceof Float32Array ? 'float' : 'int64';
  // raw_data is little-endian; so are the x86-64 and arm64 hosts this runs on.
  const raw = new Uint8Array(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength);
  return message.int(2, DATA_TYPE[type]).string(8, tensor.name).bytes(9, raw);
}

function node(n: GraphNode, index: number): Message {
  const message = new Message();
  for (const input of n.inputs) message.string(1, input);
  for (const output of n.outputs) message.string(2, output);
  message.string(3, `${n.op}_${index}`).string(4, n.op);
  for (const [name, value] of Object.entries(n.attributes ?? {})) {
    const attribute = new Message().string(1, name);
    if (typeof value === 'number') {
      attribute.int(3, value).int(20, ATTRIBUTE_INT);
    } else {
      for (const v of value) attribute.int(8, v);
      attribute.int(20, ATTRIBUTE_INTS);
    }
    message.message(5, attribute);
  }
  return message;
}

/** Serializes a graph as an ONNX model importing the default domain at `opset`. */
export function encodeModel(graph: Graph, opset = 17): Uint8Array {
  const g = new Message();
  graph.nodes.forEach((n, i) => g.message(1, node(n, i)));
  g.string(2, graph.name);
  for (const tensor of graph.initializers ?? []) g.message(5, initializer(tensor));
  for (const input of graph.inputs) g.message(11, valueInfo(input));
  for (const output of graph.outputs) g.message(12, valueInfo(output));
  return new Message()
    .int(1, IR_VERSION)
    .string(2, 'dynamic-moe-router-bench')
    .message(7, g)
    .message(8, new Message().string(1, '').int(2, opset))
    .finish();
}
