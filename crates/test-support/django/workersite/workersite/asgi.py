"""The worker's application: Channels' ChannelNameRouter sends the `channel` scope of each
named channel to its consumer, as `runworker` expects."""
from channels.routing import ChannelNameRouter, ProtocolTypeRouter

from workersite.consumers import ThumbnailWorker

application = ProtocolTypeRouter(
    {
        "channel": ChannelNameRouter(
            {"thumbnails-generate": ThumbnailWorker.as_asgi()},
        ),
    }
)
