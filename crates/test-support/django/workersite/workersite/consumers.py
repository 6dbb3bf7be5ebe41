"""A Channels worker consumer: one method per message type, as Channels dispatches them."""
from channels.consumer import AsyncConsumer


class ThumbnailWorker(AsyncConsumer):
    async def thumbnail_generate(self, message):
        """`{"type": "thumbnail.generate", "id": N, "reply_group": G, "data": bytes}`: answers
        the group with `{"type": "thumbnail.done", "id": N, "by": "django", "channel": …,
        "size": len(data)}`."""
        await self.channel_layer.group_send(
            message["reply_group"],
            {
                "type": "thumbnail.done",
                "id": message["id"],
                "by": "django",
                "channel": self.scope["channel"],
                "size": len(message["data"]),
            },
        )
