# No HTTP views: the chat is WebSocket only (see chat/routing.py).
urlpatterns = []
