build-cs/obj/proxy/buf.o: proxy/buf.c proxy/buf.h
proxy/buf.h:
