"""Model registry side: promotion, ade_ hooks, sync of promoted versions into ADE provider storage.

Modules: hookspecs (the ade_ hooks), plugins (plugin manager, built-in sync plugin), promote, store
(ADE storage layout), sync (ModelSyncManager), webhooks (receiver), watch (poller), resolve
(models:/ URI -> local dir, for training inputs), config (ModelRegistryConfig), cli (verbs).
Nothing here imports torch/transformers; submodules are imported on use to keep the CLI fast.
"""
