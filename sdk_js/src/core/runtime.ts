/**
 * The model runtime interface: one calling convention for every runtime, `run(input, dims) -> output values`.
 * {@link OrtModel} implements it over any ONNX Runtime JavaScript binding with the common API
 * (onnxruntime-node in Node, onnxruntime-web in browsers, onnxruntime-react-native on phones): pass the module.
 * A LiteRT/TFLite or Core ML runtime implements the same two members.
 */
import { ModelLoadError } from "./errors.js";

export interface ModelRuntime {
  /** Run the model on one float32 input tensor of shape `dims`; resolves to the first output's values. */
  run(input: Float32Array, dims: readonly number[]): Promise<Float32Array>;
  /** Free native resources (optional). */
  release?(): Promise<void>;
}

/** The subset of the onnxruntime-{node,web,react-native} module this SDK uses. */
export interface OrtModule {
  InferenceSession: {
    create(model: string | Uint8Array, options?: Record<string, unknown>): Promise<OrtSession>;
  };
  Tensor: new (type: "float32", data: Float32Array, dims: readonly number[]) => unknown;
}

export interface OrtSession {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  run(feeds: Record<string, unknown>): Promise<Record<string, { data: unknown; dims: readonly number[] }>>;
  release?(): Promise<void>;
}

export class OrtModel implements ModelRuntime {
  private constructor(
    private readonly ort: OrtModule,
    private readonly session: OrtSession,
  ) {}

  /**
   * Open an ONNX model (file path in Node / React Native, or the model's bytes anywhere). `numThreads`: intra-op
   * threads (Node) / wasm threads are set on `ort.env` by the caller in browsers.
   */
  static async create(ort: OrtModule, model: string | Uint8Array, options: { numThreads?: number; where?: string } = {}): Promise<OrtModel> {
    const sessionOptions: Record<string, unknown> = { executionProviders: ["cpu"], interOpNumThreads: 1 };
    if (options.numThreads) sessionOptions.intraOpNumThreads = options.numThreads;
    try {
      return new OrtModel(ort, await ort.InferenceSession.create(model, sessionOptions));
    } catch (e) {
      throw new ModelLoadError(`${options.where ?? "model"}: ONNX Runtime cannot load it (${(e as Error)?.message ?? e}); re-export the model`, { cause: e });
    }
  }

  async run(input: Float32Array, dims: readonly number[]): Promise<Float32Array> {
    const feeds = { [this.session.inputNames[0]!]: new this.ort.Tensor("float32", input, dims) };
    const out = await this.session.run(feeds);
    const first = out[this.session.outputNames[0]!]!;
    return first.data instanceof Float32Array ? first.data : Float32Array.from(first.data as ArrayLike<number>);
  }

  async release(): Promise<void> {
    await this.session.release?.();
  }
}
