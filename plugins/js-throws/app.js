// `js-throws`: a test component (never ship it) for the host's advice to
// JavaScript authors. `call` throws (or returns) what its arguments ask for; `init`
// throws an Error object when the config says so. Built by `cargo xtask
// plugins` with componentize-js (package-lock.json pins it).

export const toolApi = {
  describe() {
    return {
      info: {
        name: 'js-throws',
        version: '0.1.0',
        description: 'Test component: throws on request.',
        configSchema: JSON.stringify({
          type: 'object', additionalProperties: false,
          properties: { init_throws_error: { type: 'boolean' } },
        }),
      },
      parametersSchema: JSON.stringify({
        type: 'object', additionalProperties: false,
        properties: { throw: { enum: ['error', 'object', 'tagged', 'return-object', 'nothing'] } },
        required: ['throw'],
      }),
    };
  },

  init(config) {
    if (JSON.parse(config).init_throws_error) {
      throw new Error('config: no index here');
    }
  },

  call(args) {
    switch (JSON.parse(args).throw) {
      case 'error':
        throw new Error('the index is not loaded');
      case 'object':
        throw { message: 'the index is not loaded' };
      case 'tagged':
        throw { tag: 'failed', val: 'the index is not loaded' };
      case 'return-object':
        return { words: 3 };
      default:
        return 'nothing thrown';
    }
  },
};
