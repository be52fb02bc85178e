build-cs/obj/proxy/log.o: proxy/log.c proxy/log.h conf/conf.h
proxy/log.h:
conf/conf.h:
